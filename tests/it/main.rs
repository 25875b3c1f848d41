//! One integration-test binary (one link step, shared harness).

mod harness;

mod api;
mod architecture;
mod archive;
mod browser;
mod crash;
mod diskfull;
mod errors;
mod faults;
mod files;
mod fsck;
mod garage;
mod gc;
mod integrity;
mod lifecycle;
mod listing;
mod mysql;
mod nginx;
mod ops;
mod powercut;
mod previews;
mod reload;
mod s3;
mod security;
mod socket;
mod systemd;
mod upload;
