//! Outbound event webhooks: telling other systems about runs and flows.
//!
//! [`signing`] signs deliveries the Standard Webhooks way, so receivers can
//! verify them with any Standard Webhooks library.

pub mod signing;
