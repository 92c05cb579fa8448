//! `unpin` and `evict`: per file, one outcome line.

use super::Ctx;
use super::proto::{Outcome, Reply};
use crate::engine::{Control, Evicted, Msg};
use crate::size::human;

fn outcomes(
    ctx: &Ctx,
    paths: &[String],
    mut each: impl FnMut(&crate::fuse::catalog::Target) -> (bool, String),
) -> Reply {
    let found = match ctx.catalog().and_then(|c| c.find(paths)) {
        Ok(f) => f,
        Err(error) => return Reply::Error { error },
    };
    let mut outcomes: Vec<Outcome> = found
        .files
        .iter()
        .map(|t| {
            let (ok, message) = each(t);
            Outcome {
                path: t.path.clone(),
                ok,
                message,
            }
        })
        .collect();
    outcomes.extend(found.skipped.into_iter().map(|(path, why)| Outcome {
        path,
        ok: false,
        message: why,
    }));
    Reply::Outcomes { outcomes }
}

pub(super) fn unpin(ctx: &Ctx, paths: &[String]) -> Reply {
    outcomes(ctx, paths, |t| {
        let removed = ctx.pins.lock().remove((t.stamp.0, t.stamp.1));
        match removed {
            Some(p) => {
                if let Some(src) = p.src {
                    ctx.send(Msg::Control(Control::Pin {
                        file_id: src.file_id,
                        pinned: false,
                    }));
                }
                (true, format!("unpinned ({})", human(p.size)))
            }
            None => (true, "was not pinned".into()),
        }
    })
}

pub(super) fn evict(ctx: &Ctx, paths: &[String]) -> Reply {
    outcomes(ctx, paths, |t| {
        if ctx.pins.lock().is_pinned((t.stamp.0, t.stamp.1)) {
            return (false, "pinned: unpin it first".into());
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let sent = ctx.send(Msg::Control(Control::Evict {
            file_id: ctx.catalog().ok().and_then(|c| c.file_id_of(t.stamp)),
            stamp: t.stamp,
            reply: tx,
        }));
        let Some(e) = sent
            .then(|| rx.recv_timeout(std::time::Duration::from_secs(30)).ok())
            .flatten()
        else {
            return (false, "the fill engine did not answer".into());
        };
        describe(&e, ctx.shared.chunk_bytes)
    })
}

fn describe(e: &Evicted, chunk: u64) -> (bool, String) {
    let mut parts = Vec::new();
    if e.store_removed {
        parts.push("store file removed".to_string());
    }
    if e.chunks > 0 {
        parts.push(format!(
            "{} arena chunk(s) dropped (≤ {})",
            e.chunks,
            human(e.chunks * chunk)
        ));
    }
    let mut ok = true;
    if e.store_held {
        ok = false;
        parts.push(
            "store file kept: an open handle (passthrough or daemon-served) or a fill holds it"
                .into(),
        );
    }
    if e.held_chunks > 0 {
        ok = false;
        parts.push(format!(
            "{} chunk(s) kept: a reader holds them",
            e.held_chunks
        ));
    }
    if parts.is_empty() {
        parts.push("not resident".into());
    }
    (ok, parts.join("; "))
}
