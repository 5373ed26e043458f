//! `sg-swarm` (tests/src/bin/sg-swarm.rs) as a child process: many client connections at once,
//! run inside a tagged cgroup, read back as JSON lines.

use std::io::BufRead as _;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{helper_bin, place, Place};

/// A running `sg-swarm`; killed on drop.
pub struct Swarm {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl Swarm {
    pub fn start(at: Place<'_>, args: &[&str]) -> Swarm {
        let mut cmd = Command::new(helper_bin("sg-swarm"));
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        place(&mut cmd, at);
        let mut child = cmd.spawn().expect("spawn sg-swarm");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        Swarm { child, lines }
    }

    /// The next `{"event": event}` line, within `limit`.
    pub fn event(&mut self, event: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if v["event"] == event => return v,
                Ok(_) => {}
                Err(e) => panic!("sg-swarm: no {event:?} line within {limit:?} ({e})"),
            }
        }
    }

    /// Closes its stdin (idle mode lets go) and waits for its summary.
    pub fn finish(&mut self, limit: Duration) -> Value {
        drop(self.child.stdin.take());
        let v = self.event("done", limit);
        let _ = self.child.wait();
        v
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
