//! The pod-to-pod reachability matrix: every pod probes every other pod's address, in
//! parallel and with retries (the first packet to a peer may race ARP or a route that is
//! still being programmed), and the result is rendered for people or as JSON. The probe itself
//! is a parameter so the scheduling and rendering are tested without namespaces. A
//! dual-stack lab has one matrix per address family: `ping` and `ping -6`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;
use serde_json::{Value, json};

pub use crate::plan::Family;
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
    pub to_ip: IpAddr,
    pub outcome: Outcome,
    /// Probes sent (0 when skipped).
    pub attempts: u32,
}

/// Every ordered pair of distinct pods that have an address of the matrix's family.
#[derive(Debug, Clone)]
pub struct Matrix {
    pub family: Family,
    pub pods: Vec<Pod>,
    /// Row-major over `pods`, without the diagonal.
    pub probes: Vec<Probe>,
}

impl Matrix {
    /// Probes every pair that `expected` says should be reachable with `probe` (true when a
    /// reply came back from the target's address of `family`), up to `attempts` times,
    /// `parallel` at a time. Pods without an address of `family` are left out.
    pub fn run<E, P>(
        pods: &[Pod],
        family: Family,
        expected: E,
        probe: P,
        parallel: usize,
        attempts: u32,
    ) -> Matrix
    where
        E: Fn(&Pod, &Pod) -> bool,
        P: Fn(&Pod, IpAddr) -> bool + Sync,
    {
        let pods: Vec<Pod> = pods
            .iter()
            .filter(|p| p.addr(family).is_some())
            .cloned()
            .collect();
        let mut probes = Vec::new();
        let mut jobs = Vec::new();
        for a in &pods {
            for b in pods.iter().filter(|b| b.name != a.name) {
                let to_ip = b.addr(family).expect("pods of the family");
                let outcome = if expected(a, b) {
                    jobs.push((probes.len(), a, to_ip));
                    Outcome::Fail
                } else {
                    Outcome::Skipped
                };
                probes.push(Probe {
                    from: a.name.clone(),
                    to: b.name.clone(),
                    to_ip,
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
                    while let Some(&(slot, a, to)) = jobs.get(next.fetch_add(1, Ordering::Relaxed))
                    {
                        let mut tries = 0;
                        let mut ok = false;
                        while tries < attempts.max(1) && !ok {
                            tries += 1;
                            ok = probe(a, to);
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
            family,
            pods,
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

    /// The address of `pod` this matrix probes, as text.
    fn addr_text(&self, pod: &Pod) -> String {
        pod.addr(self.family)
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    /// Rows are the sending pod, columns the receiving one. An IPv6 matrix says so on its
    /// last line; an IPv4 one reads as it always did.
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
            .map(|p| self.addr_text(p).len())
            .max()
            .unwrap_or(0);
        let mut out = format!("{:name_w$}  {:ip_w$}", "from\\to", "");
        for p in &self.pods {
            out += &format!(" {:>col_w$}", p.name);
        }
        out.push('\n');
        for a in &self.pods {
            out += &format!("{:name_w$}  {:ip_w$}", a.name, self.addr_text(a));
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
        if self.family == Family::Ipv6 {
            out += "ping -6: ";
        }
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

    /// For `twill lab ping --json` (see [`Matrix::json_of`] for a dual-stack lab's).
    pub fn to_json(&self) -> Value {
        json!({
            "pods": self.pods.iter().map(|p| json!({"name": p.name, "ip": p.addr(self.family)})).collect::<Vec<_>>(),
            "probes": self.probes,
            "failures": self.failures().len(),
            "ok": self.all_ok(),
        })
    }

    /// `twill lab ping --json` of an IPv4 matrix and, in a dual-stack lab, the IPv6 one: the
    /// IPv4 matrix's JSON as it always was, plus the IPv6 matrix's under `ipv6`; then
    /// `failures` and `ok` count both, so a script that reads only them misses nothing.
    pub fn json_of(v4: &Matrix, v6: Option<&Matrix>) -> Value {
        let mut out = v4.to_json();
        if let Some(v6) = v6 {
            out["ipv6"] = v6.to_json();
            out["failures"] = (v4.failures().len() + v6.failures().len()).into();
            out["ok"] = (v4.all_ok() && v6.all_ok()).into();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::Ipv4Addr;

    fn pods() -> Vec<Pod> {
        [(1, 1, 2), (1, 2, 3), (2, 1, 2)]
            .into_iter()
            .map(|(h, j, last)| Pod {
                host: h,
                index: j,
                name: format!("h{h}-p{j}"),
                netns: format!("twl-t-h{h}-p{j}"),
                ip: Some(Ipv4Addr::new(10, 244, h as u8, last)),
                address: Some(format!("10.244.{h}.{last}/24")),
                identity: None,
                ip6: None,
                address6: None,
            })
            .collect()
    }

    /// The same pods with IPv6 addresses, but the last one without.
    fn dual_pods() -> Vec<Pod> {
        let mut pods = pods();
        let n = pods.len();
        for p in &mut pods[..n - 1] {
            let a = format!("fd00:10:244:{}::{}", p.host, p.index + 1);
            *p = p
                .clone()
                .with_ipv6(Some((format!("{a}/64"), a.parse().unwrap())));
        }
        pods
    }

    #[test]
    fn probes_expected_pairs_with_retries() {
        let pods = pods();
        let calls = Mutex::new(Vec::new());
        // h1 pods cannot reach h2; the second pod only answers on the second try.
        let tries_to_p2 = AtomicUsize::new(0);
        let host_of = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => v4.octets()[2] as u32,
            IpAddr::V6(_) => unreachable!("an IPv4 matrix"),
        };
        let m = Matrix::run(
            &pods,
            Family::Ipv4,
            |a, b| !(a.host == 2 && b.host == 1),
            |a, to| {
                calls.lock().unwrap().push((a.name.clone(), to.to_string()));
                if to.to_string() == "10.244.1.3" && a.name == "h1-p1" {
                    return tries_to_p2.fetch_add(1, Ordering::SeqCst) >= 1;
                }
                host_of(to) == a.host
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
            Family::Ipv4,
            |a, b| !(a.host == 2 && b.host == 1),
            |a, to| to.to_string().starts_with(&format!("10.244.{}.", a.host)),
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

        let ok = Matrix::run(&pods, Family::Ipv4, |_, _| true, |_, _| true, 2, 3);
        assert!(ok.all_ok());
        assert!(ok.render().ends_with("all 6 expected paths ok\n"));
    }

    #[test]
    fn json_form() {
        let pods = pods();
        let m = Matrix::run(
            &pods,
            Family::Ipv4,
            |a, _| a.host == 1,
            |_, to| to.to_string().starts_with("10.244.1."),
            3,
            1,
        );
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
        let m = Matrix::run(&[], Family::Ipv4, |_, _| true, |_, _| true, 16, 3);
        assert!(m.probes.is_empty());
        assert!(m.all_ok());
        // An IPv4-only lab has no IPv6 pairs.
        let m = Matrix::run(&pods(), Family::Ipv6, |_, _| true, |_, _| true, 16, 3);
        assert!(m.pods.is_empty() && m.probes.is_empty());
    }

    #[test]
    fn ipv6_matrix_probes_ipv6_addresses() {
        let pods = dual_pods();
        let seen = Mutex::new(Vec::new());
        let m = Matrix::run(
            &pods,
            Family::Ipv6,
            |_, _| true,
            |_, to| {
                seen.lock().unwrap().push(to);
                to.to_string() != "fd00:10:244:2::2"
            },
            4,
            2,
        );
        // h1-p1 and h1-p2 have IPv6 addresses; h2-p1 has none and is left out.
        assert_eq!(m.pods.len(), 2);
        assert!(seen.lock().unwrap().iter().all(IpAddr::is_ipv6));
        assert_eq!(m.probes.len(), 2);
        assert_eq!(
            m.get("h1-p1", "h1-p2").unwrap().to_ip.to_string(),
            "fd00:10:244:1::3"
        );
        let text = m.render();
        let expected = "\
from\\to                   h1-p1 h1-p2
h1-p1    fd00:10:244:1::2     .    ok
h1-p2    fd00:10:244:1::3    ok     .
ping -6: all 2 expected paths ok
";
        assert_eq!(text, expected);

        let mut pods = dual_pods();
        let last = pods.len() - 1;
        pods[last] = pods[last].clone().with_ipv6(Some((
            "fd00:10:244:2::2/64".into(),
            "fd00:10:244:2::2".parse().unwrap(),
        )));
        let v6 = Matrix::run(
            &pods,
            Family::Ipv6,
            |_, _| true,
            |_, to| to.to_string() != "fd00:10:244:2::2",
            4,
            1,
        );
        assert_eq!(v6.failures().len(), 2);
        assert!(
            v6.render()
                .contains("ping -6: 2 of 6 expected paths FAILED: h1-p1->h2-p1 (fd00:10:244:2::2)"),
            "{}",
            v6.render()
        );
        let v4 = Matrix::run(&pods, Family::Ipv4, |_, _| true, |_, _| true, 4, 1);
        let j = Matrix::json_of(&v4, Some(&v6));
        assert_eq!(j["failures"], 2);
        assert_eq!(j["ok"], false);
        assert_eq!(j["pods"][0]["ip"], "10.244.1.2");
        assert_eq!(j["ipv6"]["pods"][2]["ip"], "fd00:10:244:2::2");
        assert_eq!(j["ipv6"]["probes"][0]["toIp"], "fd00:10:244:1::3");
        assert_eq!(j["ipv6"]["ok"], false);
        // Without an IPv6 matrix, the JSON is the IPv4 matrix's alone.
        assert_eq!(Matrix::json_of(&v4, None), v4.to_json());
    }
}
