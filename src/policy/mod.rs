//! Eviction policies, one small module each (after foyer): the engine asks a policy for a victim and
//! tells it about inserts and out-of-band removals; nothing else about caching lives here.

pub mod s3fifo;
