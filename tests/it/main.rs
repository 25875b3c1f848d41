//! One integration-test binary (one link step, shared harness).

mod harness;

mod crash;
mod diskfull;
mod errors;
mod listing;
mod mysql;
mod reload;
mod upload;
