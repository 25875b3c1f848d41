pub mod health;
pub mod media;
pub mod files;
pub mod urls;
