//! The control socket: HTTP+JSON over a Unix socket, so `curl --unix-socket` works too.

pub mod auth;
mod client;
mod server;

pub use client::{Client, ClientError};
pub use server::{ControlSocket, back_off, serve};
