//! Integration tests: the real `dpms` binary on loopback, real HTTP, real plugin files in a
//! temporary folder. One test binary, one fixture (`support`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod compat;
mod config;
mod faults;
mod hotplug;
mod limits;
mod stuck;
mod support;
mod workers;
