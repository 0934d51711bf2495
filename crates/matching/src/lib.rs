//! The matcher's pure engine: no I/O, no clock, no randomness.
//!
//! # Layout
//! - [`state`]: the matcher's state folded from the log (needs, offers and their remaining
//!   capacity, verifications, assignments, declines).
//! - [`rules`]: the hard eligibility rules and the integer score of an eligible pair.
//! - [`geo`]: integer distances and the index's grid cells.
//! - [`index`]: the spatial index of offers (by category, grid cell and vetting level).
//! - [`round`]: one round: candidates from the index, the exact solve, the proposals.
//! - [`solver`]: exact maximum-weight bipartite matching on sparse candidates (and the
//!   first-come greedy baseline it is measured against).
//!
//! # Round model
//! A round matches open needs to *providers* (volunteers or organisations): each provider gets at
//! most one new assignment per round, through their best eligible offer. Capacity and the
//! policy's limit on concurrent assignments decide eligibility; later rounds use what capacity
//! is left. This keeps every round an exact assignment problem (sizes packed into capacities
//! would make it the NP-hard generalised assignment problem).
//!
//! # Determinism
//! Integer arithmetic only (distances included), ordered maps only, ties broken by ids: the same
//! events and policy give the same round, byte for byte, on any machine.

pub mod geo;
pub mod index;
pub mod round;
pub mod rules;
pub mod solver;
pub mod state;

pub use round::{Proposal, Round, greedy_round, round};
pub use state::State;
