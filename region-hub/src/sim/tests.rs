//! The simulation's tests: many random schedules, the seeds of bugs it found, and proof that
//! it catches a broken guarantee.

use super::*;

/// Seeds that broke an invariant (default faults) until the bug they found was fixed; run
/// every time. 18: a replica that missed a delivery's creation did not send its later events
/// on a takeover's fetch (`takeover::full_log`). 367: a takeover went ahead although a live
/// peer holding newer events did not answer its fetch. 53: after a takeover merged events,
/// the successor's earlier whole-log copy was taken as current (`Rebalancer::plan`).
/// 501, 1978, 2546, 3102, 4103, 4172, 4186, 5086, 5579, 8767: a modelling error, not a hub bug:
/// the settling phase cancelled drains, so a drained hub that never ran a pass while draining
/// kept serving its stale live copy; a real drain cannot be undone (the hub stops once
/// drained), so a draining hub now stops and starts again when the cluster settles.
/// 5950, 7577, 7847, 8119: a hub that took a delivery over while cut off from its owner
/// received the owner's copies as its successor after the heal and reloaded them, with the
/// gap of an event acknowledged while another hub was the successor; when the owner went
/// away it served that log without a takeover. A copy of a delivery held live but owned by
/// another hub now unloads it (`fencing::after_store`). 1281, 2734, 8851: a hub whose copy
/// went unanswered (the replica stored it) was handed the delivery's log and loaded it, then
/// reused the seq without asking the hub in doubt; a delivery in doubt is now loaded only by
/// a takeover (`fencing::after_store`).
/// 667, 2668, 3728, 4009, 4943, 5231, 6237, 7024, 7612, 8227, 9562, 9869: a stray event under
/// a reused seq (a replica stored a live copy whose answer was lost; a later owner that did
/// not hear from it wrote another event under that seq); fixed with write epochs
/// (`docs/cluster.md`, *Write epochs*): merges prefer the later epoch, a takeover repairs the
/// peers holding strays, and each hub syncs its copies with their owner. Found on the way
/// there (each failed at some step of that fix, with the schedule it then had): 5556 and
/// 8547 (a stray held without the delivery's record was never synced: `Store::delivery_ids`
/// now lists deliveries held without a record), 5231, 6086, 6809 and 9667 (synced before
/// the owner wrote over the stray: a copy past its owner's log is synced again), 3977 (the
/// owner never wrote over it: the copy past the owner's log is sent to the owner), 6617 (a
/// flap made a hub believe it owned a delivery still written elsewhere, and a live copy
/// loaded it with a hole: a live copy no longer loads a delivery, `fencing::after_store`),
/// 8045 (a copy pushed to the owner past whose log it went had a hole, and the owner loaded
/// it: a copy leaving a hole in the log no longer loads it, `takeover::has_hole`).
const REGRESSIONS: &[u64] = &[
    18, 53, 367, 501, 1978, 2546, 3102, 4103, 4172, 4186, 5086, 5579, 8767, 5950, 7577, 7847, 8119,
    1281, 2734, 8851, 667, 2668, 3728, 4009, 4943, 5231, 6237, 7024, 7612, 8227, 9562, 9869, 5556,
    8547, 6086, 6809, 9667, 3977, 6617, 8045,
];

/// Seeds among the first 10,000 that still break an invariant, through a gap not closed yet
/// (docs/cluster.md, *The simulation*): a hole left by an adopted event. A takeover adopted
/// an event never acknowledged (stored by a replica whose answer was lost); the new owner
/// acknowledged later events with live copies to a successor that never got the adopted one
/// (no rebalancer pass in between to send it the whole log), then crashed; the next owner
/// merged that successor's copy and serves a hole (2372).
/// The run skips them; `known_gaps_still_fail` checks they still fail, so a fix shows (then
/// move the seed to [`REGRESSIONS`]).
const KNOWN_GAPS: &[u64] = &[2372];

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn faults_from_env() -> Faults {
    Faults {
        ack_before_copy: std::env::var("SIM_ACK_BEFORE_COPY").is_ok_and(|v| v == "1"),
        late_frames: std::env::var("SIM_LATE_FRAMES").is_ok_and(|v| v == "1"),
        double_faults: std::env::var("SIM_DOUBLE_FAULTS").is_ok_and(|v| v == "1"),
    }
}

fn fail(seed: u64, why: &str, log: &[String]) -> ! {
    panic!(
        "simulation seed {seed}: {why}\nreplay: SIM_SEED={seed} cargo test --release -p region-hub --lib sim::\n{}",
        log.join("\n")
    );
}

#[test]
fn simulated_schedules_keep_every_guarantee() {
    let faults = faults_from_env();
    if let Some(seed) = env_u64("SIM_SEED") {
        let mut sim = Sim::new(seed, faults).expect("sim");
        let r = (|| {
            for _ in 0..STEPS {
                sim.step()?;
            }
            sim.quiesce()?;
            sim.check()
        })();
        println!("schedule {seed}:\n{}", sim.log.join("\n"));
        if let Err(e) = r {
            fail(seed, &e, &[]);
        }
        return;
    }
    for &seed in REGRESSIONS {
        if let Err((why, log)) = run(seed, faults) {
            fail(seed, &why, &log);
        }
    }
    let n = env_u64("SIM_SCHEDULES").unwrap_or(DEFAULT_SCHEDULES);
    let base = env_u64("SIM_BASE_SEED").unwrap_or(0);
    let started = std::time::Instant::now();
    let default = !faults.ack_before_copy && !faults.late_frames && !faults.double_faults;
    for seed in base..base + n {
        if default && KNOWN_GAPS.contains(&seed) {
            continue;
        }
        if let Err((why, log)) = run(seed, faults) {
            fail(seed, &why, &log);
        }
    }
    println!(
        "{n} schedules from seed {base} in {:.1?}",
        started.elapsed()
    );
}

#[test]
fn known_gaps_still_fail() {
    // Prints why each still fails (run with --nocapture), and writes each schedule to
    // `$SIM_LOG_DIR/<seed>.txt` when set.
    let dir = std::env::var("SIM_LOG_DIR").ok().filter(|d| !d.is_empty());
    let mut passing = Vec::new();
    for &seed in KNOWN_GAPS {
        let Err((why, log)) = run(seed, Faults::default()) else {
            passing.push(seed);
            continue;
        };
        println!("{seed}: {why}");
        if let Some(dir) = &dir {
            let _ = std::fs::create_dir_all(dir);
            let _ = std::fs::write(format!("{dir}/{seed}.txt"), log.join("\n") + "\n" + &why);
        }
    }
    assert!(
        passing.is_empty(),
        "seeds {passing:?} pass now: move them from KNOWN_GAPS to REGRESSIONS"
    );
}

#[test]
fn acknowledging_before_the_successors_copy_is_caught() {
    // Seed 10: the owner acknowledges #n, its copy is lost, it crashes before the successor
    // has it; the successor takes over and the acknowledged event is gone.
    let broken = Faults {
        ack_before_copy: true,
        ..Faults::default()
    };
    let (why, _) = run(10, broken).expect_err("acknowledging before the copy must be caught");
    assert!(why.starts_with("acknowledged"), "{why}");
    assert!(
        run(10, Faults::default()).is_ok(),
        "seed 10 passes with the guarantee kept"
    );
}

#[test]
fn a_schedule_replays_identically() {
    let log = |seed| {
        let mut sim = Sim::new(seed, Faults::default()).expect("sim");
        for _ in 0..STEPS {
            let _ = sim.step();
        }
        sim.log.clone()
    };
    assert_eq!(log(7), log(7));
    assert_ne!(log(7), log(8));
}

/// Not a check: counts which invariant the failing schedules break
/// (`cargo test --release -p region-hub --lib sim::tests::survey -- --ignored --nocapture`).
#[test]
#[ignore]
fn survey() {
    let n = env_u64("SIM_SCHEDULES").unwrap_or(DEFAULT_SCHEDULES);
    let base = env_u64("SIM_BASE_SEED").unwrap_or(0);
    let mut kinds: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut failing = Vec::new();
    let started = std::time::Instant::now();
    for seed in base..base + n {
        if let Err((why, _)) = run(seed, faults_from_env()) {
            failing.push(seed);
            let kind: String = why
                .split_whitespace()
                .filter(|w| !w.chars().any(|c| c.is_ascii_digit()))
                .take(6)
                .collect::<Vec<_>>()
                .join(" ");
            let e = kinds.entry(kind).or_insert((0, seed));
            e.0 += 1;
        }
    }
    println!("{n} schedules in {:.1?}", started.elapsed());
    println!("failing seeds: {failing:?}");
    for (k, (count, first)) in kinds {
        println!("{count:6} (first seed {first}): {k}");
    }
}
