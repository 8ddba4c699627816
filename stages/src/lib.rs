//! kiln's stage kinds, one module per kind, and the pipeline that puts a recipe's stages in
//! mkosi's order.
//!
//! Tree stages ([`trees`], [`remove_files`]) work on manifests alone; [`modules`] prunes
//! kernel modules and firmware on the manifest and runs depmod on a checkout of just the kept
//! modules; mutable stages ([`scripts`]) run on an overlay over a read-only checkout and record
//! what changed. Host effects (mounts, sandboxes, scripts, host tools) sit behind
//! [`host::Host`]. [`pe`] reads the headers of PE images, [`uki`] assembles and inspects Unified
//! Kernel Images, [`sign`] signs them for Secure Boot and [`vm`] boots them in qemu.
//!
//! ```no_run
//! # use std::sync::Arc;
//! use kiln_recipe::{load_project, LoadOptions};
//! let dir = std::path::Path::new("recipes/arch-rescue");
//! let reader = kiln_stages::host::reader::RealReaderHost;
//! let loaded = load_project(dir, &LoadOptions::default(), &reader)?;
//! let host = Arc::new(kiln_stages::host::RealHost::default());
//! let pipeline = kiln_stages::pipeline::pipeline(&loaded.recipe, &loaded.dir, host)?;
//! println!("{} stages", pipeline.graph.len());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod build;
pub mod config;
pub mod error;
mod export;
pub mod formats;
pub mod host;
pub mod initrd;
mod log;
pub mod modules;
pub mod namespace;
pub mod packages;
mod pe;
pub mod pipeline;
mod remove_files;
mod scripts;
pub mod sign;
#[cfg(test)]
mod stage_versions;
mod tarball;
pub mod trees;
pub mod uki;
pub mod vm;
