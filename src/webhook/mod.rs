//! The receiving side of instant triggers, without the HTTP server: deciding whether a pushed
//! delivery is genuine and fresh before anything is journaled or run. GHL signs its deliveries
//! (`verify::verify_ghl`); Capsule signs nothing, so each of its subscriptions gets an
//! unguessable path token (`verify::verify_capsule`). The listener that calls these, and the
//! store of seen `webhookId`s, live elsewhere; everything here is a pure function of the bytes,
//! the keys and the clock it is given.

pub mod verify;

pub use verify::{
    CapsuleDelivery, CapsuleHook, GhlDelivery, GhlKeys, MAX_BODY_BYTES, MAX_CLOCK_SKEW, PublicKey, Refusal, Scheme,
    Signatures, new_path_token, sign_ed25519, verify_capsule, verify_ghl,
};
