//! The compression worker under the engine: encodes happen off the ring thread, a full queue
//! drops victims instead of waiting, a chunk read again during its encode is filled again, and
//! shutdown waits for the jobs in flight.

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

#[test]
fn fills_go_on_while_the_worker_encodes_and_a_full_queue_drops() {
    let (mut rig, gate) = rig_with_gate();
    rig.start();
    let (a, da) = text_file(&rig, "a", POOL, 1);
    let (b, db) = text_file(&rig, "b", 2 * POOL, 2);
    warm(&rig, &a, &da);
    let held = gate.lock();
    // The worker is stalled inside its first job: every read still completes.
    churn(&rig, &b, &db);
    let s = rig.stats();
    assert_eq!(
        n(&s.compressions),
        0,
        "nothing published while the worker is held"
    );
    assert!(n(&s.compress_dropped) >= 1, "a full queue drops victims");
    drop(held);
    wait_until("the queued encodes are published", || {
        n(&s.compressions) == COMPRESS_JOBS as u64
    });
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
    assert_eq!(compressed.len(), COMPRESS_JOBS, "{compressed:?}");
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
    let held = gate.lock();
    churn(&rig, &b, &db);
    // Chunk 0 left first: it is with the worker now, out of the index.
    assert!(!rig.cached(&a, 0));
    let fills = n(&rig.stats().fills);
    let rx = rig.miss(&a, 3, 9000);
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "answered while its encode is held"
    );
    drop(held);
    assert_eq!(answer(&rx), slice(&da, 3, 9000));
    let s = rig.stats();
    assert_eq!(
        n(&s.fills),
        fills,
        "served from the encoded chunk, not read again"
    );
    assert_eq!(n(&s.compress_discarded), 0);
    assert_eq!(rig.read(&a, 3, 9000), slice(&da, 3, 9000));
}

#[test]
fn shutdown_waits_for_the_encodes_in_flight() {
    let (mut rig, gate) = rig_with_gate();
    rig.start();
    let (a, da) = text_file(&rig, "a", POOL, 1);
    let (b, db) = text_file(&rig, "b", 2 * POOL, 2);
    warm(&rig, &a, &da);
    let held = gate.lock();
    churn(&rig, &b, &db);
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
    assert_eq!(n(&rig.stats().compressions), COMPRESS_JOBS as u64);
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
