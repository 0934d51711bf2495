//! How an assignment moves: the one rule every reader of the log applies (the matcher's state,
//! the read models' fold, intake judging a volunteer's command).
//!
//! An assignment is proposed by a round, then answered by its volunteer (accepted or declined),
//! and ends completed, declined, expired or cancelled. The matcher decides expiries and
//! cancellations at a round's cut and appends them later, so a volunteer's answer can land
//! between the two: such a decision is *void*, not an error, once what it decided on no longer
//! holds. An expiry ends only a proposal still awaiting its answer; a cancellation ends a live
//! assignment (awaiting its answer or accepted). Anything else out of turn (an acceptance of
//! an ended assignment, a completion of one never accepted) is *invalid*: intake never appends
//! it, and a log holding it is set aside by the read models.

use crate::events::Event;
use crate::values::Response;

/// Where an assignment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Proposed, awaiting its volunteer's answer.
    Proposed,
    /// Accepted by its volunteer, not yet completed.
    Accepted,
    /// Completed, declined, expired or cancelled.
    Ended,
}

/// What an event of an assignment does to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// The assignment moves to this stage.
    To(Stage),
    /// A round's decision that no longer holds (the volunteer answered, or the assignment
    /// ended, between the round's cut and its append): it changes nothing.
    Void,
    /// The event cannot follow this stage (or is not an assignment's move at all).
    Invalid,
}

impl Stage {
    /// Whether the offer's place is still taken.
    pub fn is_live(self) -> bool {
        self != Stage::Ended
    }

    /// What `event` does to an assignment at this stage. A proposal is its creation, not a
    /// move: see [`Stage::after`].
    pub fn on(self, event: &Event) -> Move {
        use Stage::*;
        match (event, self) {
            (Event::VolunteerRespondedV1(r), Proposed) => match r.response {
                Response::Accept => Move::To(Accepted),
                Response::Decline => Move::To(Ended),
            },
            (Event::AssignmentCompletedV1(_), Accepted) => Move::To(Ended),
            (Event::AssignmentExpiredV1(_), Proposed) => Move::To(Ended),
            (Event::AssignmentExpiredV1(_), Accepted | Ended) => Move::Void,
            (Event::AssignmentCancelledV1(_), Proposed | Accepted) => Move::To(Ended),
            (Event::AssignmentCancelledV1(_), Ended) => Move::Void,
            _ => Move::Invalid,
        }
    }

    /// The stage of an assignment whose last event is `last`, if that alone tells: a round's
    /// expiry or cancellation may be void, and then only the assignment's history (see
    /// [`Stage::after`]) does.
    pub fn after_last(last: &Event) -> Option<Stage> {
        match last {
            Event::AssignmentProposedV1(_) => Some(Stage::Proposed),
            Event::VolunteerRespondedV1(r) if r.response == Response::Accept => {
                Some(Stage::Accepted)
            }
            Event::VolunteerRespondedV1(_) | Event::AssignmentCompletedV1(_) => Some(Stage::Ended),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Stage::Proposed => "proposed, awaiting an answer",
            Stage::Accepted => "accepted",
            Stage::Ended => "ended",
        }
    }

    /// The stage after an assignment's events, in log order (`None`: no proposal first). An
    /// event out of turn changes nothing, as every reader takes it (the read models set it
    /// aside, the matcher passes over it).
    pub fn after<'a>(events: impl IntoIterator<Item = &'a Event>) -> Option<Stage> {
        let mut events = events.into_iter();
        let mut stage = match events.next()? {
            Event::AssignmentProposedV1(_) => Stage::Proposed,
            _ => return None,
        };
        for e in events {
            if let Move::To(next) = stage.on(e) {
                stage = next;
            }
        }
        Some(stage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::*;
    use crate::ids::EntityId;

    fn answer(response: Response) -> Event {
        Event::VolunteerRespondedV1(VolunteerRespondedV1 {
            assignment: EntityId([1; 16]),
            response,
            reason: String::new(),
        })
    }

    fn expired() -> Event {
        Event::AssignmentExpiredV1(AssignmentExpiredV1 {
            assignment: EntityId([1; 16]),
            round_through_seq: 1,
        })
    }

    fn cancelled() -> Event {
        Event::AssignmentCancelledV1(AssignmentCancelledV1 {
            assignment: EntityId([1; 16]),
            reason: CancelReason::OfferWithdrawn,
            round_through_seq: 1,
        })
    }

    fn completed() -> Event {
        Event::AssignmentCompletedV1(AssignmentCompletedV1 {
            assignment: EntityId([1; 16]),
            personal: crate::values::Personal::None,
        })
    }

    #[test]
    fn every_move_from_every_stage() {
        use Move::*;
        use Stage::*;
        let events = [
            answer(Response::Accept),
            answer(Response::Decline),
            completed(),
            expired(),
            cancelled(),
        ];
        let table: [(Stage, [Move; 5]); 3] = [
            (
                Proposed,
                [To(Accepted), To(Ended), Invalid, To(Ended), To(Ended)],
            ),
            (Accepted, [Invalid, Invalid, To(Ended), Void, To(Ended)]),
            (Ended, [Invalid, Invalid, Invalid, Void, Void]),
        ];
        for (stage, moves) in table {
            for (e, want) in events.iter().zip(moves) {
                assert_eq!(stage.on(e), want, "{stage:?} on {}", e.type_name());
            }
        }
    }

    #[test]
    fn an_acceptance_that_beat_an_expiry_stands_and_can_be_completed() {
        let proposed = Event::AssignmentProposedV1(AssignmentProposedV1 {
            assignment: EntityId([1; 16]),
            need: EntityId([2; 16]),
            offer: EntityId([3; 16]),
            volunteer: crate::ids::PersonId::parse("v", "vol-1").expect("valid"),
            round_through_seq: 1,
            policy_version: 1,
            distance_m: 10,
            score: ScoreV1 {
                total: 1,
                urgency: 1,
                waiting: 0,
                distance: 0,
                fairness: 0,
            },
        });
        let accepted = answer(Response::Accept);
        assert_eq!(
            Stage::after([&proposed, &accepted, &expired()]),
            Some(Stage::Accepted)
        );
        assert_eq!(
            Stage::after([&proposed, &accepted, &expired(), &completed()]),
            Some(Stage::Ended)
        );
        assert_eq!(
            Stage::after([&proposed, &cancelled(), &accepted]),
            Some(Stage::Ended),
            "an acceptance after a cancellation is out of turn: it changes nothing"
        );
        assert_eq!(Stage::on(Stage::Ended, &accepted), Move::Invalid);
        assert_eq!(Stage::after([&accepted]), None, "no proposal first");
    }
}
