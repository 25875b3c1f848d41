//! One integration-test binary (one link step, shared harness).

mod harness;

mod browser;
mod crash;
mod errors;
mod files;
mod listing;
mod nginx;
mod reload;
mod upload;
