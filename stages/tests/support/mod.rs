//! What the uki tests share: synthetic PE images and a real stub and kernel from Debian.

pub(crate) mod debian;
pub(crate) mod synthetic_pe;
