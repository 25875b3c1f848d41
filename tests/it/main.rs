//! One integration-test binary (one link step, shared harness).

mod harness;

mod crash;
mod diskfull;
mod errors;
mod fsck;
mod gc;
mod lifecycle;
mod listing;
mod mysql;
mod reload;
mod systemd;
mod upload;
