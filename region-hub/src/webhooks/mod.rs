//! Signed webhooks from a durable outbox: subscriptions, the outbox rows written with each
//! commit (`durable::outbox`), the sans-IO [`dispatch::Dispatcher`] deciding what to send and
//! when, the HMAC signature, and the task that moves the bytes (`docs/operations.md`,
//! *Webhooks*).

pub mod dispatch;
pub mod sender;
pub mod sign;
pub mod subscription;

pub use dispatch::{Action, Dispatcher, DispatcherConfig, Outcome, QueueKey, RowKey};
pub use subscription::{EventKind, Subscription, SubscriptionView};
