//! `nitro-uring bench`: side-by-side throughput and latency of the mount, its source and the FUSE
//! ceiling (a null filesystem with the same fuser setup), on the user's directory or on a generated
//! model directory, with everything mounted in-process and taken down again, also on Ctrl+C; and
//! `nitro-uring bench codec`, the codecs on real files.
//!
//! Every workload runs on three targets in the same run: the source read directly, the mount, and
//! the null filesystem. The state before each row (what is in the page cache, what is in the arena)
//! is part of the row, and is written next to it in the JSON.
//!
//! Why a package of its own, with a program of its own (`nitro-uring-bench`) that `nitro-uring
//! bench` runs: the benchmark mounts in-process, so it depends on the `nitro-uring` library, and the
//! `nitro-uring` program lives in that library's package; Cargo does not allow the package cycle
//! that making the benchmark a dependency of the program would need. Apart, the benchmark's
//! dependencies (progress bars, HDR histograms, JSON reports, divan) stay out of the daemon, and the
//! daemon's package does not build them. `nitro-uring bench` finds this program next to itself and
//! `exec`s it (`src/bench_launch.rs` of the main package; under `cargo run` it builds it first).
//!
//! A run, in the order the modules take part: `cli` (arguments), `run` (signals, clean-up),
//! `workspace` (the temporary directory), `plan` (data, sizes, timing), `harness` (the mounts a row
//! needs), `rows` (the workloads), `rounds` (targets taking turns), `workload` (the reads
//! themselves), `finish` and `summary` (the report), `report` (its types, table and plot); `s3`
//! (rows of an S3 source, on request) and `resident` (the store's rows) bring data of their own.

pub mod cli;
pub mod codec;
pub mod dataset;
mod finish;
mod harness;
pub mod nullfs;
mod plan;
pub mod repeat;
pub mod report;
pub mod resident;
mod rounds;
mod rows;
mod run;
pub mod s3;
mod summary;
pub mod sys;
pub mod workload;
mod workspace;

pub use cli::{BenchArgs, BenchCmd};
pub use rows::WORKLOADS;
pub use run::run;
