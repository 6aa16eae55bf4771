//! The pod-to-pod reachability matrix: every pod probes every other pod's address, in
//! parallel and with retries (the first packet to a peer may race ARP or a route that is
//! still being programmed), and the result is rendered for people or as JSON. The probe itself
//! is a parameter so the scheduling and rendering are tested without namespaces.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;
use serde_json::{Value, json};

use crate::state::Pod;

/// At most this many probes run at once: enough to finish a 10-pod lab in about a second,
/// few enough not to swamp 2 cores with `ip netns exec` + `ping` processes.
pub const MAX_PARALLEL: usize = 16;
/// Tries per pair before it counts as failed.
pub const ATTEMPTS: u32 = 3;

/// The result of one ordered pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Fail,
    /// Not expected to be reachable, so not probed.
    Skipped,
}

/// One ordered pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    pub from: String,
    pub to: String,
    pub to_ip: Ipv4Addr,
    pub outcome: Outcome,
    /// Probes sent (0 when skipped).
    pub attempts: u32,
}

/// Every ordered pair of distinct pods.
#[derive(Debug, Clone)]
pub struct Matrix {
    pub pods: Vec<Pod>,
    /// Row-major over `pods`, without the diagonal.
    pub probes: Vec<Probe>,
}

impl Matrix {
    /// Probes every pair that `expected` says should be reachable with `probe` (true when a
    /// reply came back), up to `attempts` times, `parallel` at a time.
    pub fn run<E, P>(pods: &[Pod], expected: E, probe: P, parallel: usize, attempts: u32) -> Matrix
    where
        E: Fn(&Pod, &Pod) -> bool,
        P: Fn(&Pod, &Pod) -> bool + Sync,
    {
        let mut probes = Vec::new();
        let mut jobs = Vec::new();
        for a in pods {
            for b in pods.iter().filter(|b| b.name != a.name) {
                let outcome = if expected(a, b) {
                    jobs.push((probes.len(), a, b));
                    Outcome::Fail
                } else {
                    Outcome::Skipped
                };
                probes.push(Probe {
                    from: a.name.clone(),
                    to: b.name.clone(),
                    to_ip: b.ip,
                    outcome,
                    attempts: 0,
                });
            }
        }
        let results = Mutex::new(Vec::with_capacity(jobs.len()));
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..parallel.clamp(1, jobs.len().max(1)) {
                s.spawn(|| {
                    while let Some(&(slot, a, b)) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let mut tries = 0;
                        let mut ok = false;
                        while tries < attempts.max(1) && !ok {
                            tries += 1;
                            ok = probe(a, b);
                        }
                        results.lock().unwrap().push((slot, ok, tries));
                    }
                });
            }
        });
        for (slot, ok, tries) in results.into_inner().unwrap() {
            probes[slot].outcome = if ok { Outcome::Ok } else { Outcome::Fail };
            probes[slot].attempts = tries;
        }
        Matrix {
            pods: pods.to_vec(),
            probes,
        }
    }

    /// Pairs that should be reachable and are not.
    pub fn failures(&self) -> Vec<&Probe> {
        self.probes
            .iter()
            .filter(|p| p.outcome == Outcome::Fail)
            .collect()
    }

    /// True when every pair that should be reachable is.
    pub fn all_ok(&self) -> bool {
        self.failures().is_empty()
    }

    /// The probe from pod `from` to pod `to` (by name).
    pub fn get(&self, from: &str, to: &str) -> Option<&Probe> {
        self.probes.iter().find(|p| p.from == from && p.to == to)
    }

    /// Rows are the sending pod, columns the receiving one.
    pub fn render(&self) -> String {
        let by_pair: HashMap<(&str, &str), Outcome> = self
            .probes
            .iter()
            .map(|p| ((p.from.as_str(), p.to.as_str()), p.outcome))
            .collect();
        let name_w = self
            .pods
            .iter()
            .map(|p| p.name.len())
            .max()
            .unwrap_or(0)
            .max("from\\to".len());
        let col_w = self
            .pods
            .iter()
            .map(|p| p.name.len())
            .max()
            .unwrap_or(0)
            .max(4);
        let ip_w = self
            .pods
            .iter()
            .map(|p| p.ip.to_string().len())
            .max()
            .unwrap_or(0);
        let mut out = format!("{:name_w$}  {:ip_w$}", "from\\to", "");
        for p in &self.pods {
            out += &format!(" {:>col_w$}", p.name);
        }
        out.push('\n');
        for a in &self.pods {
            out += &format!("{:name_w$}  {:ip_w$}", a.name, a.ip.to_string());
            for b in &self.pods {
                let cell = match by_pair.get(&(a.name.as_str(), b.name.as_str())) {
                    None => ".",
                    Some(Outcome::Ok) => "ok",
                    Some(Outcome::Fail) => "FAIL",
                    Some(Outcome::Skipped) => "-",
                };
                out += &format!(" {cell:>col_w$}");
            }
            out.push('\n');
        }
        let expected = self
            .probes
            .iter()
            .filter(|p| p.outcome != Outcome::Skipped)
            .count();
        let skipped = self.probes.len() - expected;
        let failures = self.failures();
        if failures.is_empty() {
            out += &format!("all {expected} expected paths ok");
        } else {
            out += &format!("{} of {expected} expected paths FAILED:", failures.len());
            for f in &failures {
                out += &format!(" {}->{} ({})", f.from, f.to, f.to_ip);
            }
        }
        if skipped > 0 {
            out += &format!("; {skipped} not expected to be reachable (-: host-gw across subnets)");
        }
        out.push('\n');
        out
    }

    /// For `twill lab ping --json`.
    pub fn to_json(&self) -> Value {
        json!({
            "pods": self.pods.iter().map(|p| json!({"name": p.name, "ip": p.ip})).collect::<Vec<_>>(),
            "probes": self.probes,
            "failures": self.failures().len(),
            "ok": self.all_ok(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> Vec<Pod> {
        [(1, 1, 2), (1, 2, 3), (2, 1, 2)]
            .into_iter()
            .map(|(h, j, last)| Pod {
                host: h,
                index: j,
                name: format!("h{h}-p{j}"),
                netns: format!("twl-t-h{h}-p{j}"),
                ip: Ipv4Addr::new(10, 244, h as u8, last),
                address: format!("10.244.{h}.{last}/24"),
                identity: None,
            })
            .collect()
    }

    #[test]
    fn probes_expected_pairs_with_retries() {
        let pods = pods();
        let calls = Mutex::new(Vec::new());
        // h1 pods cannot reach h2; the second pod only answers on the second try.
        let tries_to_p2 = AtomicUsize::new(0);
        let m = Matrix::run(
            &pods,
            |a, b| !(a.host == 2 && b.host == 1),
            |a, b| {
                calls.lock().unwrap().push((a.name.clone(), b.name.clone()));
                if b.name == "h1-p2" && a.name == "h1-p1" {
                    return tries_to_p2.fetch_add(1, Ordering::SeqCst) >= 1;
                }
                b.host == a.host
            },
            4,
            3,
        );
        assert_eq!(m.probes.len(), 6);
        assert_eq!(m.get("h1-p1", "h1-p2").unwrap().outcome, Outcome::Ok);
        assert_eq!(m.get("h1-p1", "h1-p2").unwrap().attempts, 2);
        assert_eq!(m.get("h1-p2", "h1-p1").unwrap().attempts, 1);
        assert_eq!(m.get("h1-p1", "h2-p1").unwrap().outcome, Outcome::Fail);
        assert_eq!(m.get("h1-p1", "h2-p1").unwrap().attempts, 3);
        assert_eq!(m.get("h2-p1", "h1-p1").unwrap().outcome, Outcome::Skipped);
        assert_eq!(m.get("h2-p1", "h1-p1").unwrap().attempts, 0);
        assert!(m.get("h1-p1", "h1-p1").is_none());
        // Skipped pairs are never probed.
        assert!(!calls.lock().unwrap().iter().any(|(a, _)| a == "h2-p1"));
        let fails: Vec<_> = m
            .failures()
            .iter()
            .map(|p| (p.from.as_str(), p.to.as_str()))
            .collect();
        assert_eq!(fails, [("h1-p1", "h2-p1"), ("h1-p2", "h2-p1")]);
        assert!(!m.all_ok());
    }

    #[test]
    fn renders_rows_from_columns_to() {
        let pods = pods();
        let m = Matrix::run(
            &pods,
            |a, b| !(a.host == 2 && b.host == 1),
            |a, b| a.host == b.host || b.index == 9,
            16,
            1,
        );
        let text = m.render();
        let expected = "\
from\\to             h1-p1 h1-p2 h2-p1
h1-p1    10.244.1.2     .    ok  FAIL
h1-p2    10.244.1.3    ok     .  FAIL
h2-p1    10.244.2.2     -     -     .
2 of 4 expected paths FAILED: h1-p1->h2-p1 (10.244.2.2) h1-p2->h2-p1 (10.244.2.2); 2 not expected to be reachable (-: host-gw across subnets)
";
        assert_eq!(text, expected);

        let ok = Matrix::run(&pods, |_, _| true, |_, _| true, 2, 3);
        assert!(ok.all_ok());
        assert!(ok.render().ends_with("all 6 expected paths ok\n"));
    }

    #[test]
    fn json_form() {
        let pods = pods();
        let m = Matrix::run(&pods, |a, _| a.host == 1, |_, b| b.host == 1, 3, 1);
        let v = m.to_json();
        assert_eq!(v["pods"][2]["name"], "h2-p1");
        assert_eq!(v["pods"][2]["ip"], "10.244.2.2");
        assert_eq!(v["failures"], 2);
        assert_eq!(v["ok"], false);
        assert_eq!(v["probes"][0]["from"], "h1-p1");
        assert_eq!(v["probes"][0]["to"], "h1-p2");
        assert_eq!(v["probes"][0]["toIp"], "10.244.1.3");
        assert_eq!(v["probes"][0]["outcome"], "ok");
        assert_eq!(v["probes"][4]["outcome"], "skipped");
    }

    #[test]
    fn no_pods_no_probes() {
        let m = Matrix::run(&[], |_, _| true, |_, _| true, 16, 3);
        assert!(m.probes.is_empty());
        assert!(m.all_ok());
    }
}
