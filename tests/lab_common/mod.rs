//! Shared by the lab tests that run traffic through real agents (tunnel_lab, wireguard_lab,
//! bgp_lab, dualstack_lab): the guard that removes a lab, pod addresses, commands started in
//! a lab namespace, the reading of a `ping -D` run, an underlay capture, and polling for a
//! condition with a deadline.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use twill_lab::Lab;

/// Removes lab `.0` when dropped (pass or panic).
pub struct Guard(pub String);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = twill_lab::down(&self.0);
    }
}

/// The address of host `host`'s first pod.
pub fn pod_ip(lab: &Lab, host: u32) -> String {
    lab.pods()
        .iter()
        .find(|p| p.host == host)
        .unwrap()
        .ip4()
        .to_string()
}

/// Starts `cmd` in the lab's namespace `target` with stdout and stderr piped.
pub fn spawn_in(lab: &Lab, target: &str, cmd: &[&str]) -> Child {
    let ns = lab.target_ns(target).unwrap();
    Command::new("ip")
        .args(["netns", "exec", &ns])
        .args(cmd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Replies of a `ping -D` run: (transmitted, received, longest run of missing replies in ms,
/// counting missing replies before the first and after the last one too).
pub fn ping_report(out: &str, interval_ms: u64) -> (u64, u64, u64) {
    let mut seqs: Vec<u64> = out
        .lines()
        .filter_map(|l| l.split("icmp_seq=").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    let stat = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in:\n{out}"));
    let nums: Vec<u64> = stat
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|t| t.parse().ok())
        .collect();
    let sent = nums[0];
    let inner = seqs.windows(2).map(|w| w[1] - w[0] - 1).max().unwrap_or(0);
    let head = seqs.first().map_or(sent, |first| first - 1);
    let tail = seqs.last().map_or(sent, |last| sent.saturating_sub(*last));
    (sent, nums[1], inner.max(head).max(tail) * interval_ms)
}

/// When each missing reply's request was sent (seconds since the epoch, as `ping -D` prints
/// them), estimated from the timestamps of the replies around it: a `ping -D -i 0.01` run's
/// output. A loss can then be placed before, during or after an event of the test.
pub fn missing_send_times(out: &str, interval_s: f64) -> Vec<(u64, f64)> {
    let replies: Vec<(u64, f64)> = out
        .lines()
        .filter_map(|l| {
            let time = l.strip_prefix('[')?.split(']').next()?.parse().ok()?;
            let seq = l
                .split("icmp_seq=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((seq, time))
        })
        .collect();
    let sent: u64 = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let got: std::collections::BTreeMap<u64, f64> = replies.into_iter().collect();
    (1..=sent)
        .filter(|seq| !got.contains_key(seq))
        .map(|seq| {
            let before = got.range(..seq).next_back();
            let after = got.range(seq..).next();
            let time = match (before, after) {
                (Some((&a, &ta)), Some((&b, &tb))) => {
                    ta + (seq - a) as f64 * (tb - ta) / (b - a) as f64
                }
                (Some((&a, &ta)), None) => ta + (seq - a) as f64 * interval_s,
                (None, Some((&b, &tb))) => tb - (b - seq) as f64 * interval_s,
                (None, None) => f64::NAN,
            };
            (seq, time)
        })
        .collect()
}

/// Seconds since the epoch, as `ping -D` stamps its lines.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Runs `during` while h1's first pod keeps a TCP connection (iperf3, 6 s at 50 Mbit/s, so the
/// VM stays responsive) and a ping every 10 ms (500) open to h2's first pod; asserts that the
/// connection survived and that traffic resumed within 1 s. Returns the ping's (sent,
/// received, longest gap in ms).
pub fn traffic_across(lab: &mut Lab, during: impl FnOnce(&mut Lab)) -> (u64, u64, u64) {
    let (counts, _) = traffic_across_with_output(lab, during);
    counts
}

/// [`traffic_across`], with the ping's output too (for [`missing_send_times`]).
pub fn traffic_across_with_output(
    lab: &mut Lab,
    during: impl FnOnce(&mut Lab),
) -> ((u64, u64, u64), String) {
    let dst = pod_ip(lab, 2);
    let server = spawn_in(lab, "h2-p1", &["iperf3", "-s", "-1"]);
    std::thread::sleep(Duration::from_millis(300));
    let client = spawn_in(
        lab,
        "h1-p1",
        &["iperf3", "-c", &dst, "-t", "6", "-b", "50M", "-J"],
    );
    let pinger = spawn_in(
        lab,
        "h1-p1",
        &["ping", "-D", "-i", "0.01", "-c", "500", "-W", "1", &dst],
    );
    std::thread::sleep(Duration::from_millis(1000));
    during(lab);
    let ping = pinger.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&ping.stdout).to_string();
    let (sent, received, gap_ms) = ping_report(&text, 10);
    assert_eq!(sent, 500);
    assert!(received >= 400, "only {received}/{sent} replies:\n{text}");
    assert!(
        gap_ms <= 1000,
        "traffic did not resume within 1 s: {gap_ms} ms without replies ({received}/{sent})"
    );
    let iperf = client.wait_with_output().unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&iperf.stdout).unwrap_or(serde_json::Value::Null);
    assert!(
        iperf.status.success() && report["error"].is_null(),
        "the TCP connection did not survive: {}",
        String::from_utf8_lossy(&iperf.stdout)
    );
    let _ = server.wait_with_output();
    ((sent, received, gap_ms), text)
}

/// The IPv6 address of host `host`'s first pod (dual-stack labs).
pub fn pod_ip6(lab: &Lab, host: u32) -> String {
    lab.pods()
        .iter()
        .find(|p| p.host == host)
        .and_then(|p| p.ip6)
        .unwrap_or_else(|| panic!("h{host}'s first pod has no IPv6 address"))
        .to_string()
}

/// Starts `cmd` in network namespace `ns` (one the lab does not list as a target, such as an
/// outside host's) with stdout and stderr piped.
pub fn spawn_in_ns(ns: &str, cmd: &[&str]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A file that is removed on drop.
pub struct TempPath(pub std::path::PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// tcpdump writing every packet of the lab's underlay namespace that matches `filter` (all
/// bridges and router ports) to a pcap; [`UnderlayCapture::start`] returns once it listens.
/// Killed on drop.
pub struct UnderlayCapture {
    child: Child,
    file: Option<TempPath>,
}

impl UnderlayCapture {
    pub fn start(lab: &Lab, filter: &str) -> UnderlayCapture {
        use std::io::BufRead;
        let file = TempPath(std::env::temp_dir().join(format!(
            "twill-cap-{}-{}.pcap",
            lab.name(),
            twill_testkit::random_suffix(4)
        )));
        let ns = lab.target_ns("underlay").unwrap();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns, "tcpdump", "-i", "any"])
            // Packets as they come: with the default buffer timeout, ones still in the
            // kernel's ring when SIGINT arrives are lost.
            .args(["--immediate-mode", "-U", "-n", "-w"])
            .arg(&file.0)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tcpdump (apt-get install tcpdump)");
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while !line.contains("listening on") {
            line.clear();
            if err.read_line(&mut line).unwrap_or(0) == 0 {
                panic!("tcpdump did not start");
            }
        }
        UnderlayCapture {
            child,
            file: Some(file),
        }
    }

    /// Stops tcpdump (SIGINT flushes the file) and returns the pcap.
    pub fn stop(mut self) -> TempPath {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = self.child.wait();
        self.file.take().expect("stopped once")
    }
}

impl Drop for UnderlayCapture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `ok` every 100 ms until it holds, for at most `secs`; panics with `what` and the
/// last state `ok` described.
pub fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match ok() {
            Ok(()) => return,
            Err(last) if Instant::now() > deadline => {
                panic!("timed out after {secs} s waiting for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
