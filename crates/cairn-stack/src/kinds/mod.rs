//! One module per datastore kind, each a [`crate::datastore::Datastore`];
//! [`crate::registry::BUILT_IN`] lists them.

pub mod command;
pub mod files;
pub mod mariadb;
pub mod postgres;
pub mod redis;
pub mod sqlite;
