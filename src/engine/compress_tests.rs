//! The compression worker under the engine: encodes happen off the ring thread, a fill that
//! finds the worker's queue full waits for it instead of dropping reused chunks (issue 10), a
//! chunk read again during its encode waits for it, and shutdown waits for the jobs in flight.

use super::*;
use crate::engine::compress::COMPRESS_JOBS;

/// Pool chunks: more than the worker's queue holds, so a storm overflows it.
const POOL: u64 = COMPRESS_JOBS as u64 + 8;

/// A stopped engine over `POOL` chunks with plain zstd, the worker's gate, and two text files:
/// `a` (`POOL` chunks, read once and touched by a second handle, so it moves to main when evicted
/// from the small queue) and `b` (2 × `POOL` chunks).
fn rig_with_gate() -> (Rig, Arc<parking_lot::Mutex<()>>) {
    let rig = Rig::new(POOL, 4, CompressMode::Zstd);
    let gate = rig
        .engine
        .as_ref()
        .and_then(|e| e.compressor.as_ref())
        .map(|c| c.gate.clone())
        .expect("a compression worker");
    (rig, gate)
}

fn text_file(rig: &Rig, name: &str, chunks: u64, seed: u8) -> (Arc<Source>, Vec<u8>) {
    let mut data = text(chunks as usize * CHUNK as usize);
    data.iter_mut().step_by(4096).for_each(|b| *b ^= seed);
    (rig.file(name, &data), data)
}

/// Fills all of `a` and touches each chunk with another handle (a reuse).
fn warm(rig: &Rig, a: &Arc<Source>, data: &[u8]) {
    for c in 0..POOL {
        assert_eq!(rig.read(a, c * CHUNK, 100), slice(data, c * CHUNK, 100));
        let key = Key {
            file: a.file_id,
            chunk: c,
        };
        drop(rig.shared.index.pin(key, 99));
    }
}

/// Reads all of `b`: every fill needs a victim, and the first victims are `a`'s reused chunks.
fn churn(rig: &Rig, b: &Arc<Source>, data: &[u8]) {
    for c in 0..2 * POOL {
        assert_eq!(rig.read(b, c * CHUNK, 100), slice(data, c * CHUNK, 100));
    }
}

/// Holds the worker, then asks for chunk 0 of `b`: its fill hands `COMPRESS_JOBS` of `a`'s
/// reused chunks to the worker and then waits for room. Returns the held gate and the miss.
fn stall_on_the_worker<'g>(
    rig: &Rig,
    gate: &'g parking_lot::Mutex<()>,
    a: &Arc<Source>,
    b: &Arc<Source>,
) -> (parking_lot::MutexGuard<'g, ()>, mpsc::Receiver<Answer>) {
    let held = gate.lock();
    let rx = rig.miss(b, 0, 100);
    // Chunk 0 left first: it is with the worker now, out of the index.
    wait_until("a's first chunk with the worker", || !rig.cached(a, 0));
    (held, rx)
}

#[test]
fn a_full_worker_queue_makes_fills_wait_instead_of_dropping() {
    let (mut rig, gate) = rig_with_gate();
    rig.start();
    let (a, da) = text_file(&rig, "a", POOL, 1);
    let (b, db) = text_file(&rig, "b", 2 * POOL, 2);
    warm(&rig, &a, &da);
    let (held, rx) = stall_on_the_worker(&rig, &gate, &a, &b);
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "answered while the worker's queue is full and held"
    );
    let s = rig.stats();
    assert_eq!(n(&s.compressions), 0, "nothing published while held");
    assert_eq!(n(&s.compress_dropped), 0, "a full queue dropped a victim");
    drop(held);
    assert_eq!(answer(&rx), slice(&db, 0, 100));
    wait_until("the held encodes are published", || {
        n(&s.compressions) >= COMPRESS_JOBS as u64
    });
    churn(&rig, &b, &db);
    assert_eq!(n(&s.compress_dropped), 0);
    // The published chunks are served decoded, byte-exact.
    let compressed: Vec<u64> = (0..POOL)
        .filter(|&c| rig.cached(&a, c))
        .filter(|&c| {
            let key = Key {
                file: a.file_id,
                chunk: c,
            };
            rig.shared
                .index
                .pin(key, 0)
                .is_some_and(|p| p.view().form == crate::index::Form::Encoded)
        })
        .collect();
    assert!(!compressed.is_empty());
    for c in compressed {
        assert_eq!(
            rig.read(&a, c * CHUNK + 5, 4000),
            slice(&da, c * CHUNK + 5, 4000)
        );
    }
}

#[test]
fn a_chunk_read_during_its_encode_waits_for_it() {
    let (mut rig, gate) = rig_with_gate();
    rig.start();
    let (a, da) = text_file(&rig, "a", POOL, 1);
    let (b, db) = text_file(&rig, "b", 2 * POOL, 2);
    warm(&rig, &a, &da);
    let (held, rx_b) = stall_on_the_worker(&rig, &gate, &a, &b);
    let fills = n(&rig.stats().fills);
    let rx = rig.miss(&a, 3, 9000);
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "answered while its encode is held"
    );
    drop(held);
    assert_eq!(answer(&rx), slice(&da, 3, 9000));
    assert_eq!(answer(&rx_b), slice(&db, 0, 100));
    let s = rig.stats();
    assert_eq!(
        n(&s.fills),
        fills + 1,
        "a's chunk served from the encoded chunk, not read again (b's chunk 0 was)"
    );
    assert_eq!(n(&s.compress_discarded), 0);
    assert_eq!(rig.read(&a, 3, 9000), slice(&da, 3, 9000));
}

#[test]
fn shutdown_waits_for_the_encodes_in_flight() {
    let (mut rig, gate) = rig_with_gate();
    rig.start();
    let (a, da) = text_file(&rig, "a", POOL, 1);
    let (b, _) = text_file(&rig, "b", 2 * POOL, 2);
    warm(&rig, &a, &da);
    let (held, _rx) = stall_on_the_worker(&rig, &gate, &a, &b);
    let stopper = std::thread::spawn(move || {
        rig.stop();
        rig
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !stopper.is_finished(),
        "the engine stopped with encodes in flight"
    );
    drop(held);
    let rig = stopper.join().expect("stopped");
    let engine = rig.engine.as_ref().expect("stopped engine");
    assert_eq!(engine.compressing(), 0);
    // The held jobs, and any the waiting fill needed after them.
    assert!(n(&rig.stats().compressions) >= COMPRESS_JOBS as u64);
    // Every arena byte is accounted for by an indexed chunk: no raw block was left behind.
    let indexed: usize = (0..rig.shared.index.slot_count())
        .filter(|&s| engine.policy.is_queued(s))
        .map(|s| {
            let key = rig.shared.index.key_of(s);
            rig.shared
                .index
                .pin(key, 0)
                .map_or(0, |p| p.view().stored_bytes())
        })
        .sum();
    assert_eq!(rig.shared.arena.usage().used_bytes as usize, indexed);
}
