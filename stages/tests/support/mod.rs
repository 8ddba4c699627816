//! What the uki tests share: synthetic PE images and a real stub and kernel from Debian.

pub mod debian;
pub mod synthetic_pe;
