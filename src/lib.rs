//! nitro-uring: a read-only FUSE mirror of a source directory that serves file bytes from a RAM
//! arena filled by a dedicated io_uring thread. See README.md for the read path.

pub mod arena;
pub mod codec;
pub mod control;
pub mod engine;
pub mod fuse;
pub mod heartbeat;
pub mod index;
pub mod logging;
pub mod mount;
pub mod policy;
pub mod remote;
pub mod sets;
pub mod size;
pub mod store;
