//! Signed webhooks from a durable outbox, the decisions and types: subscriptions, the sans-IO
//! [`dispatch::Dispatcher`] deciding what to send and when, and the HMAC signature. The outbox
//! rows are written with each commit by `durable::outbox`; the task that moves the bytes is
//! `serve::webhook_sender` (`docs/operations.md`, *Webhooks*). This module depends on no other
//! module of the hub.

pub mod dispatch;
pub mod sign;
pub mod subscription;

pub use dispatch::{Action, Dispatcher, DispatcherConfig, Outcome, QueueKey, RowKey};
pub use subscription::{EventKind, Subscription, SubscriptionView};
