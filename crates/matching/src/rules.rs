//! Hard eligibility rules and the integer score of an eligible (need, offer) pair.
//!
//! Eligibility is never traded against score: a pair either obeys every rule or is not a
//! candidate. The score only orders eligible pairs; every eligible pair scores at least 1, so
//! the exact solve never prefers leaving a need unmatched to matching it.

use muster_schema::events::{NeedSpecV1, OfferSpecV1};
use muster_schema::{PolicyV1, Skill, Timestamp, VerificationKind};

use crate::geo;

/// The criminal-record level a verification kind proves (0: none).
pub fn criminal_record_level(kind: &VerificationKind) -> u8 {
    match kind {
        VerificationKind::CriminalRecordBasic => 1,
        VerificationKind::CriminalRecordStandard => 2,
        VerificationKind::CriminalRecordEnhanced => 3,
        VerificationKind::CriminalRecordEnhancedBarred => 4,
        VerificationKind::Identity | VerificationKind::Qualification(_) => 0,
    }
}

/// FNV-1a over `bytes`: cheap, and fixed forever (snapshots keep what it computes).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A qualification's bit among 16 (by [`fnv1a`] of its name), 0 for other kinds. A
/// provider's bits, OR-ed over what they hold, are a superset filter: an offer whose provider
/// lacks a bit of a need's cannot serve it, without reading either record.
pub fn qualification_bits(kind: &VerificationKind) -> u16 {
    match kind {
        VerificationKind::Qualification(name) => 1 << (fnv1a(name.as_bytes()) % 16),
        _ => 0,
    }
}

/// Whether holding `held` satisfies a requirement for `required`.
pub fn satisfies(held: &VerificationKind, required: &VerificationKind) -> bool {
    let (h, r) = (criminal_record_level(held), criminal_record_level(required));
    if r > 0 { h >= r } else { held == required }
}

/// A verification as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeldVerification {
    pub kind: VerificationKind,
    pub issued_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked: bool,
}

impl HeldVerification {
    /// Valid at log time `now`: issued, not expired, not revoked.
    pub fn valid_at(&self, now: Timestamp) -> bool {
        !self.revoked && self.issued_at <= now && self.expires_at.is_none_or(|e| now < e)
    }
}

/// Every verification `required` is held, valid at `now`.
pub fn verifications_hold<'a>(
    required: &[VerificationKind],
    held: impl Iterator<Item = &'a HeldVerification> + Clone,
    now: Timestamp,
) -> bool {
    required.iter().all(|r| {
        held.clone()
            .any(|h| h.valid_at(now) && satisfies(&h.kind, r))
    })
}

fn skills_cover(offered: &[Skill], required: &[Skill]) -> bool {
    // Both are sorted and unique (canonical in the schema).
    let mut it = offered.iter();
    required.iter().all(|r| it.any(|o| o == r))
}

/// Why a pair is not eligible (for audit exports), or `Ok(distance)` when it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ineligible {
    Kind,
    Skills,
    Verification,
    Distance,
    Window,
    Capacity,
    VolunteerLoad,
    Declined,
}

/// The facts about a pair beyond the two specs.
#[derive(Debug, Clone, Copy)]
pub struct PairContext {
    pub now: Timestamp,
    /// Capacity of the offer not committed to pending or accepted assignments.
    pub remaining_capacity: u32,
    /// Pending and accepted assignments the provider holds.
    pub provider_load: u32,
    /// The provider declined this need before.
    pub declined: bool,
}

/// Checks every hard rule; returns the distance in metres when all hold.
pub fn eligible<'a>(
    need: &NeedSpecV1,
    offer: &OfferSpecV1,
    held: impl Iterator<Item = &'a HeldVerification> + Clone,
    ctx: &PairContext,
    policy: &PolicyV1,
) -> Result<u32, Ineligible> {
    if !offer.kinds.contains(&need.category) {
        return Err(Ineligible::Kind);
    }
    if !skills_cover(&offer.skills, &need.required_skills) {
        return Err(Ineligible::Skills);
    }
    if ctx.declined {
        return Err(Ineligible::Declined);
    }
    if ctx.remaining_capacity < u32::from(need.party_size) {
        return Err(Ineligible::Capacity);
    }
    if ctx.provider_load >= policy.max_concurrent_per_volunteer {
        return Err(Ineligible::VolunteerLoad);
    }
    if !offer.availability.iter().any(|w| w.overlaps(&need.window)) {
        return Err(Ineligible::Window);
    }
    let d = geo::distance_m(&need.location, &offer.location);
    if d > offer.travel_radius_m.min(policy.max_radius_m) {
        return Err(Ineligible::Distance);
    }
    if !verifications_hold(&need.required_verifications, held, ctx.now) {
        return Err(Ineligible::Verification);
    }
    Ok(d)
}

/// Whether an offer still serves a need it was matched to, after either changed: the kind of
/// help and skills, `room` for the party (the offer's capacity not committed to its other
/// assignments), a common time, and the need within the offer's own reach. (The policy's
/// limits and the volunteer's load apply to new matches only.)
pub fn still_fits(need: &NeedSpecV1, offer: &OfferSpecV1, room: u32) -> bool {
    offer.kinds.contains(&need.category)
        && skills_cover(&offer.skills, &need.required_skills)
        && room >= u32::from(need.party_size)
        && offer.availability.iter().any(|w| w.overlaps(&need.window))
        && geo::distance_m(&need.location, &offer.location) <= offer.travel_radius_m
}

/// An eligible pair's score and its parts (each already weighted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Score {
    pub total: i64,
    pub urgency: i64,
    pub waiting: i64,
    pub distance: i64,
    pub fairness: i64,
}

/// Scores an eligible pair. `waited_us` is how long the need has been open in log time;
/// `recent_tasks` how many assignments the provider has been given in this incident.
pub fn score(
    urgency: u8,
    waited_us: i64,
    distance_m: u32,
    recent_tasks: u32,
    policy: &PolicyV1,
) -> Score {
    let w = |x: u32| i64::from(x);
    // Each part is on a 0..=100 scale before weighting.
    let urgency = w(policy.weight_urgency) * i64::from(urgency) * 20;
    let ten_minutes = (waited_us.max(0) / 600_000_000).min(100);
    let waiting = w(policy.weight_waiting) * ten_minutes;
    let max = i64::from(policy.max_radius_m.max(1));
    let distance = w(policy.weight_distance) * (max - i64::from(distance_m).min(max)) * 100 / max;
    let fairness = w(policy.weight_fairness) * 100 / (1 + i64::from(recent_tasks));
    Score {
        total: 1 + urgency + waiting + distance + fairness,
        urgency,
        waiting,
        distance,
        fairness,
    }
}
