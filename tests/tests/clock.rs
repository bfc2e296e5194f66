//! Clock changes on the real host: the wall clock jumps forward two hours and back while an
//! agent spends, and spend is neither reset nor counted twice. Budget windows use the wall clock
//! for calendar bounds and a monotonic clock for durations (a rolling window keeps its spend
//! across the jump); the audit log records each jump.
//!
//! This test really sets CLOCK_REALTIME (faked clocks do not reach the daemon's timers or the
//! kernel), so it is alone in its test binary, and the guard puts the clock back from a
//! monotonic reference when it ends, failing or not.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use governor_tests::{AgentsRoot, Daemon, Serve, Server, privileged, workload};

/// Restores the wall clock to where it would be had nobody touched it.
struct ClockGuard {
    wall0: SystemTime,
    mono0: Instant,
}

fn set_wall(t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap();
    let ts = libc::timespec { tv_sec: d.as_secs() as libc::time_t, tv_nsec: d.subsec_nanos() as libc::c_long };
    // SAFETY: a valid clock id and a valid timespec.
    let r = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) };
    assert_eq!(r, 0, "clock_settime: {}", std::io::Error::last_os_error());
}

impl ClockGuard {
    fn new() -> Self {
        Self { wall0: SystemTime::now(), mono0: Instant::now() }
    }

    /// Sets the wall clock `secs` away from where it should be now.
    fn jump(&self, secs: i64) {
        let right = self.wall0 + self.mono0.elapsed();
        let t = if secs >= 0 {
            right + Duration::from_secs(secs as u64)
        } else {
            right - Duration::from_secs(secs.unsigned_abs())
        };
        set_wall(t);
    }
}

impl Drop for ClockGuard {
    fn drop(&mut self) {
        set_wall(self.wall0 + self.mono0.elapsed());
    }
}

fn budget(daemon: &Daemon, agent: &str) -> (u64, u64) {
    let b = daemon.budget(agent);
    (b["window_spend_pico"].as_u64().unwrap(), b["spent_total_pico"].as_u64().unwrap())
}

const CENT: u64 = 10_000_000_000; // 0.01 in pico-units

#[test]
fn a_wall_clock_jump_neither_resets_nor_double_counts_spend() {
    if !privileged("a_wall_clock_jump_neither_resets_nor_double_counts_spend") {
        return;
    }
    let root = AgentsRoot::new();
    let sink = Server::start(Serve::Sink);
    let daemon = Daemon::start(
        &root,
        &format!(
            "[[endpoint]]\nname = \"api\"\naddresses = [\"127.0.0.1\"]\nports = [{}]\nprice = {{ connection = \"0.01\" }}\n\
             [[agent]]\nname = \"rolling\"\nendpoints = [\"api\"]\nbudget = {{ limit = \"1.00\", window = \"rolling:10m\" }}\n\
             [[agent]]\nname = \"total\"\nendpoints = [\"api\"]\nbudget = {{ limit = \"1.00\", window = \"total\" }}\n",
            sink.port
        ),
    );
    let connect = |agent: &str, n: usize| {
        for _ in 0..n {
            assert!(workload(Some(&root.path.join(agent)), &["connect", &sink.addr("127.0.0.1")]).ok());
        }
    };
    let settled = |agent: &str, want: (u64, u64)| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while budget(&daemon, agent) != want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(budget(&daemon, agent), want, "{agent}: (window spend, total)");
    };
    connect("rolling", 10);
    connect("total", 10);
    settled("rolling", (10 * CENT, 10 * CENT));
    settled("total", (10 * CENT, 10 * CENT));

    // A 10-minute rolling window samples the spend every second: let it take a few samples
    // after the spending, which a jump misread would age out at once.
    std::thread::sleep(Duration::from_secs(3));
    let clock = ClockGuard::new();
    clock.jump(2 * 3600);
    // Several accounting ticks on the far side of the jump: a rolling window measured on the
    // wall clock alone would have emptied, and nothing may be charged twice.
    std::thread::sleep(Duration::from_millis(1500));
    settled("rolling", (10 * CENT, 10 * CENT));
    settled("total", (10 * CENT, 10 * CENT));
    connect("rolling", 5);
    settled("rolling", (15 * CENT, 15 * CENT));

    clock.jump(0);
    std::thread::sleep(Duration::from_millis(1500));
    settled("rolling", (15 * CENT, 15 * CENT));
    settled("total", (10 * CENT, 10 * CENT));
    drop(clock);

    let jumps: Vec<i64> = daemon
        .audit_log()
        .iter()
        .filter(|r| r["kind"] == "clock_jump")
        .filter_map(|r| r["details"]["seconds"].as_i64())
        .collect();
    assert_eq!(jumps.len(), 2, "{jumps:?}");
    assert!((jumps[0] - 7200).abs() <= 2 && (jumps[1] + 7200).abs() <= 2, "{jumps:?}");
}
