//! The spatial index of offers: by the category an offer serves, grid cell and its provider's
//! criminal-record level, kept up to date as offers arrive, change and leave and as providers'
//! verifications change.
//!
//! Two grids nest: coarse cells of 0.05° ([`geo::cell`]) hold the fine cells of 0.005°
//! ([`geo::fine_cell`]) that have offers. Engines 1 and 2 search coarse cells (what they were
//! recorded with: a coarse cell yields the same offers as ever); engine 3 walks fine cells
//! nearest first ([`SpatialIndex::nearest`]), so in a dense town it stops after a few hundred
//! metres instead of judging the thousands of offers in a coarse cell. Scarce classes (a
//! criminal-record level few hold) are kept apart from abundant ones in every cell. Each entry
//! carries its offer's location, the categories it serves, its provider's qualifications (as
//! bits) and fairness tier (tasks so far, capped), so a search can rule an offer out, or bound
//! its score, without reading the offer or its provider; an offer serving several categories is
//! indexed once.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use muster_schema::events::OfferSpecV1;
use muster_schema::{Category, GeoPoint};

use crate::geo::{self, Seam};

/// A grid cell (coarse or fine, by context).
pub type Cell = (i32, i32);

/// Criminal-record levels 0 (none) to 4 (enhanced with barred lists).
const LEVELS: usize = 5;

/// One offer in a cell: its slot, where it is and what it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub slot: u32,
    pub at: GeoPoint,
    /// The categories it serves, one bit each (see [`kind_bit`]).
    kinds: u8,
    /// Its provider's qualifications, [`crate::rules::qualification_bits`] OR-ed.
    quals: u16,
    /// Its provider's tasks so far, at most [`TIERS`] - 1: fairness scores them no higher
    /// than a provider with this many tasks.
    tier: u8,
    /// Its capacity not committed to pending or accepted assignments (at most `u16::MAX`).
    room: u16,
    /// Its provider's criminal-record level (at most `LEVELS` - 1).
    level: u8,
}

/// Fairness tiers an entry records: tasks 0, 1, 2, and 3 or more.
pub const TIERS: u8 = 4;

/// How an offer is filed besides where it is and what it serves: its provider's
/// criminal-record level, qualification bits and fairness tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Class {
    pub level: u8,
    pub quals: u16,
    /// Tasks so far (the index caps them at [`TIERS`] - 1).
    pub tasks: u32,
}

impl Entry {
    /// The tasks its provider had at least, when fairness is scored: a lower bound, so a
    /// score computed with it is an upper bound.
    pub fn tasks_at_least(&self) -> u32 {
        u32::from(self.tier)
    }

    /// Whether its provider may hold every qualification of `required` (a mask of
    /// [`crate::rules::qualification_bits`]): `false` proves they lack one of them.
    pub fn may_qualify(&self, required: u16) -> bool {
        self.quals & required == required
    }

    /// Whether its offer has room for a party of `party` now: `false` proves it cannot take
    /// them (the rules' capacity check, see [`crate::rules::eligible`]).
    pub fn has_room(&self, party: u16) -> bool {
        self.room >= party
    }
}

/// The offers of one fine cell, sorted by their provider's criminal-record level, then slot.
/// Most fine cells hold an offer or two: up to [`INLINE`] are kept in the bucket itself, so a
/// walk reads a cell's offers where it finds the cell, not behind another pointer.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Bucket {
    entries: SmallVec<[Entry; INLINE]>,
}

/// Offers a bucket holds without a separate allocation.
const INLINE: usize = 2;

impl Bucket {
    /// The offers serving `category` from providers at `min_level` or above.
    pub fn serving(&self, category: Category, min_level: u8) -> impl Iterator<Item = &Entry> + '_ {
        let bit = kind_bit(category);
        let min_level = min_level.min(LEVELS as u8 - 1);
        let from = self.entries.partition_point(|e| e.level < min_level);
        self.entries[from..]
            .iter()
            .filter(move |e| e.kinds & bit != 0)
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Where offer `slot` of `level` is, or would go.
    fn position(&self, level: u8, slot: u32) -> Result<usize, usize> {
        self.entries
            .binary_search_by_key(&(level, slot), |e| (e.level, e.slot))
    }

    fn get(&self, level: u8, slot: u32) -> Option<&Entry> {
        self.position(level, slot).ok().map(|i| &self.entries[i])
    }

    fn get_mut(&mut self, level: u8, slot: u32) -> Option<&mut Entry> {
        let i = self.position(level, slot).ok()?;
        Some(&mut self.entries[i])
    }

    fn put(&mut self, entry: Entry) {
        // New offers take new slots: most land at the end.
        if self
            .entries
            .last()
            .is_none_or(|e| (e.level, e.slot) < (entry.level, entry.slot))
        {
            self.entries.push(entry);
        } else if let Err(i) = self.position(entry.level, entry.slot) {
            self.entries.insert(i, entry);
        }
    }

    fn take(&mut self, level: u8, slot: u32) {
        if let Ok(i) = self.position(level, slot) {
            self.entries.remove(i);
        }
    }
}

/// Where one offer is indexed: its fine cell, and its level in the cell's bucket (what it is
/// filed by is in its [`Entry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Placed {
    fine: Cell,
    level: u8,
}

/// The fairness tier of a provider with `tasks` tasks.
fn tier_of_tasks(tasks: u32) -> u8 {
    tasks.min(u32::from(TIERS - 1)) as u8
}

/// The room an entry records for `room` places (capped: no party is that large).
fn room_of(room: u32) -> u16 {
    room.min(u32::from(u16::MAX)) as u16
}

/// A category's bit in an entry's `kinds`.
fn kind_bit(k: Category) -> u8 {
    1 << (k as u8)
}

fn kind_bits(kinds: &[Category]) -> u8 {
    kinds.iter().fold(0, |bits, k| bits | kind_bit(*k))
}

/// Offer slots by coarse cell, fine cell and level.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct SpatialIndex {
    cells: BTreeMap<Cell, BTreeMap<Cell, Bucket>>,
    /// Where each offer slot is indexed (`None`: not indexed).
    placed: Vec<Option<Placed>>,
    /// The largest travel radius of any offer ever indexed: no search need reach further.
    max_radius_m: u32,
}

impl SpatialIndex {
    pub(crate) fn remove(&mut self, slot: u32) {
        let Some(Some(placed)) = self.placed.get_mut(slot as usize).map(Option::take) else {
            return;
        };
        let coarse = geo::coarse_of(placed.fine);
        let Some(fines) = self.cells.get_mut(&coarse) else {
            return;
        };
        if let Some(bucket) = fines.get_mut(&placed.fine) {
            bucket.take(placed.level, slot);
            if bucket.is_empty() {
                fines.remove(&placed.fine);
            }
        }
        if fines.is_empty() {
            self.cells.remove(&coarse);
        }
    }

    /// Indexes offer `slot` as its provider's `class` says, with `room` for that many more.
    pub(crate) fn insert(&mut self, slot: u32, spec: &OfferSpecV1, class: Class, room: u32) {
        self.max_radius_m = self.max_radius_m.max(spec.travel_radius_m);
        let entry = Entry {
            slot,
            at: spec.location,
            kinds: kind_bits(&spec.kinds),
            quals: class.quals,
            tier: tier_of_tasks(class.tasks),
            room: room_of(room),
            level: class.level.min(LEVELS as u8 - 1),
        };
        if self.entry(slot) == Some(&entry) {
            // Already there (a provider's new verification or task that changes nothing the
            // index files by).
            return;
        }
        self.remove(slot);
        let placed = Placed {
            fine: geo::fine_cell(&spec.location),
            level: entry.level,
        };
        self.cells
            .entry(geo::coarse_of(placed.fine))
            .or_default()
            .entry(placed.fine)
            .or_default()
            .put(entry);
        let i = slot as usize;
        if self.placed.len() <= i {
            self.placed.resize(i + 1, None);
        }
        self.placed[i] = Some(placed);
    }

    /// Files offer `slot` under its provider's new count of `tasks`, as it is otherwise (its
    /// level and qualifications are filed by what their verifications were when they changed).
    pub(crate) fn set_tasks(&mut self, slot: u32, tasks: u32) {
        if let Some(entry) = self.entry_mut(slot) {
            entry.tier = tier_of_tasks(tasks);
        }
    }

    /// Files offer `slot` with `room` for that many more (its capacity not committed).
    pub(crate) fn set_room(&mut self, slot: u32, room: u32) {
        if let Some(entry) = self.entry_mut(slot) {
            entry.room = room_of(room);
        }
    }

    /// Offer `slot`'s entry (`None`: not indexed).
    fn entry_mut(&mut self, slot: u32) -> Option<&mut Entry> {
        let placed = self.placed.get(slot as usize).copied().flatten()?;
        self.cells
            .get_mut(&geo::coarse_of(placed.fine))?
            .get_mut(&placed.fine)?
            .get_mut(placed.level, slot)
    }

    /// The room of offer `slot`'s entry, where searches read it (`None`: not indexed).
    pub fn room_of(&self, slot: u32) -> Option<u16> {
        self.entry(slot).map(|e| e.room)
    }

    /// Offer `slot`'s entry (`None`: not indexed).
    fn entry(&self, slot: u32) -> Option<&Entry> {
        let placed = self.placed.get(slot as usize).copied().flatten()?;
        self.cells
            .get(&geo::coarse_of(placed.fine))?
            .get(&placed.fine)?
            .get(placed.level, slot)
    }

    /// The fairness tier of offer `slot`'s entry, where searches read it (`None`: not indexed).
    pub fn tier_of(&self, slot: u32) -> Option<u8> {
        self.entry(slot).map(|e| e.tier)
    }

    /// The largest travel radius of any offer indexed so far.
    pub fn max_radius_m(&self) -> u32 {
        self.max_radius_m
    }

    /// Offer slots serving `category` in the coarse `cell`, from providers at criminal-record
    /// level `min_level` or above (each once, in no particular order).
    pub fn in_cell(&self, category: Category, min_level: u8, cell: Cell, out: &mut Vec<u32>) {
        if let Some(fines) = self.cells.get(&cell) {
            for bucket in fines.values() {
                out.extend(bucket.serving(category, min_level).map(|e| e.slot));
            }
        }
    }

    /// Offer slots that may serve `category` within `radius_m` of `at`, from providers at
    /// criminal-record level `min_level` or above: a superset, sorted and unique (the rules
    /// check each candidate).
    pub fn candidates(
        &self,
        category: Category,
        min_level: u8,
        at: &GeoPoint,
        radius_m: u32,
        seam: Seam,
    ) -> Vec<u32> {
        let radius_m = radius_m.min(self.max_radius_m);
        let mut out = Vec::new();
        for cell in geo::cells_within(at, radius_m, seam) {
            self.in_cell(category, min_level, cell, &mut out);
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The fine cells holding offers within `reach_m` of `at`, nearest first by
    /// [`geo::min_distance_to_fine_cell_m`] (ties: cell order), each with that bound (a
    /// cell's [`Bucket::serving`] picks the offers of a category). Lazy: a caller that stops
    /// early, or lowers the walk's [`Nearest::limit`], never touches the cells beyond.
    pub fn nearest<'a>(&'a self, at: &GeoPoint, reach_m: u32, seam: Seam) -> Nearest<'a> {
        let reach_m = reach_m.min(self.max_radius_m);
        let mut frontier = BinaryHeap::with_capacity(64);
        for cell in geo::cells_within(at, reach_m, seam) {
            let bound = geo::min_distance_to_cell_m(at, cell, seam);
            if bound <= reach_m {
                frontier.push(Reverse(Step::new(bound, cell, Held::Coarse)));
            }
        }
        Nearest {
            index: self,
            at: *at,
            seam,
            reach_m,
            limit_m: reach_m,
            beyond_limit: None,
            frontier,
            bounds: Vec::new(),
        }
    }
}

/// What a step of the walk holds. A coarse cell not yet opened; one row of an opened coarse
/// cell's fine cells, not yet laid out (its bound is its nearest cell's); a fine cell's offers.
/// A cell enters the walk only once its row is reached: opening a coarse cell costs ten rows,
/// not a hundred cells.
#[derive(Debug, Clone, Copy)]
enum Held<'a> {
    Coarse,
    Row {
        fines: &'a BTreeMap<Cell, Bucket>,
        /// Which of the walk's [`geo::FineBounds`] has the coarse cell's bounds.
        bounds: u32,
    },
    Fine(&'a Bucket),
}

impl Held<'_> {
    /// At equal bounds coarse cells open first, then rows, before any fine cell is yielded.
    fn rank(&self) -> u128 {
        match self {
            Held::Coarse => 0,
            Held::Row { .. } => 1,
            Held::Fine(_) => 2,
        }
    }
}

/// A step of the walk, ordered by bound, then [`Held::rank`], then cell (for a row: its first
/// cell): all packed in one integer, so the heap compares integers.
#[derive(Debug)]
struct Step<'a> {
    key: u128,
    held: Held<'a>,
}

impl<'a> Step<'a> {
    fn new(bound: u32, cell: Cell, held: Held<'a>) -> Self {
        // Flipping the sign bit orders an i32 as an u32.
        let flip = |x: i32| u128::from(x as u32 ^ 0x8000_0000);
        Self {
            key: u128::from(bound) << 72 | held.rank() << 64 | flip(cell.0) << 32 | flip(cell.1),
            held,
        }
    }

    fn bound(&self) -> u32 {
        (self.key >> 72) as u32
    }

    fn cell(&self) -> Cell {
        let unflip = |x: u128| (x as u32 ^ 0x8000_0000) as i32;
        (unflip(self.key >> 32), unflip(self.key))
    }
}

impl PartialEq for Step<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Step<'_> {}

impl PartialOrd for Step<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Step<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.cmp(&other.key)
    }
}

/// Fine cells nearest first: see [`SpatialIndex::nearest`].
#[derive(Debug)]
pub struct Nearest<'a> {
    index: &'a SpatialIndex,
    at: GeoPoint,
    seam: Seam,
    /// How far the walk was asked to go: cells beyond hold nothing the caller wants.
    reach_m: u32,
    /// Cells farther than this are left out (at most `reach_m`).
    limit_m: u32,
    /// The nearest bound of a cell within reach left out by the limit.
    beyond_limit: Option<u32>,
    frontier: BinaryHeap<Reverse<Step<'a>>>,
    /// The fine-cell bounds of each coarse cell opened.
    bounds: Vec<geo::FineBounds>,
}

impl<'a> Nearest<'a> {
    /// From now on, leave out the cells farther than `metres` (a limit only ever tightens).
    pub fn limit(&mut self, metres: u32) {
        self.limit_m = self.limit_m.min(metres);
    }

    /// The nearest any offer within reach not yet yielded can be: the bound of the next cell,
    /// or of the nearest cell within reach left out by the limit (`None`: no offer in reach is
    /// left).
    pub fn unvisited_bound(&mut self) -> Option<u32> {
        let next = self.peek_bound();
        match (next, self.beyond_limit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The bound of the next cell [`Iterator::next`] would yield (`None`: no cell is left within
    /// the limit). Every offer in it and in every later cell is at least this far away.
    pub fn peek_bound(&mut self) -> Option<u32> {
        self.settle();
        self.frontier.peek().map(|Reverse(step)| step.bound())
    }

    /// A cell at `bound` is left out: if it is within reach, only the limit kept it out.
    fn leave_out(&mut self, bound: u32) {
        if bound > self.reach_m {
            return;
        }
        self.beyond_limit = Some(self.beyond_limit.map_or(bound, |b| b.min(bound)));
    }

    /// Puts a step in line if it is within the limit, else leaves it out.
    fn enter(&mut self, bound: u32, cell: Cell, held: Held<'a>) {
        if bound <= self.limit_m {
            self.frontier.push(Reverse(Step::new(bound, cell, held)));
        } else {
            self.leave_out(bound);
        }
    }

    /// Opens coarse cells and rows, and drops cells beyond the limit, until a fine cell within
    /// it is first in line. A coarse cell's bound never exceeds its fine cells', nor a row's
    /// its cells' (it is their least), so the fine cells come out nearest first.
    fn settle(&mut self) {
        while let Some(Reverse(first)) = self.frontier.peek() {
            let bound = first.bound();
            if bound > self.limit_m {
                // Everything left is beyond the limit.
                self.leave_out(bound);
                self.frontier.clear();
                return;
            }
            let (cell, held) = (first.cell(), first.held);
            match held {
                Held::Fine(_) => return,
                Held::Coarse => {
                    self.frontier.pop();
                    self.open(cell);
                }
                Held::Row { fines, bounds } => {
                    self.frontier.pop();
                    let row = cell.0;
                    let all = std::mem::take(&mut self.bounds);
                    let b = &all[bounds as usize];
                    for (fine, bucket) in fines.range((row, i32::MIN)..=(row, i32::MAX)) {
                        self.enter(b.bound(*fine), *fine, Held::Fine(bucket));
                    }
                    self.bounds = all;
                }
            }
        }
    }

    /// Puts the rows of a coarse cell's fine cells in line, each at its nearest cell's bound.
    fn open(&mut self, cell: Cell) {
        let Some(fines) = self.index.cells.get(&cell) else {
            return;
        };
        let bounds = geo::FineBounds::new(&self.at, cell, self.seam);
        // Per row: its first cell and the column of its nearest (the bound rises with the
        // column's longitude gap).
        let mut rows: [Option<(Cell, usize)>; geo::FINE_PER_CELL] = [None; geo::FINE_PER_CELL];
        for fine in fines.keys() {
            let (i, j) = bounds.place(*fine);
            match &mut rows[i] {
                None => rows[i] = Some((*fine, j)),
                Some((_, nearest)) => {
                    if bounds.col_gap(j) < bounds.col_gap(*nearest) {
                        *nearest = j;
                    }
                }
            }
        }
        let id = self.bounds.len() as u32;
        let row_bounds: Vec<(u32, Cell)> = rows
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.map(|(first, j)| (bounds.bound_at(i, j), first)))
            .collect();
        self.bounds.push(bounds);
        for (bound, first) in row_bounds {
            self.enter(bound, first, Held::Row { fines, bounds: id });
        }
    }
}

impl<'a> Iterator for Nearest<'a> {
    type Item = (u32, &'a Bucket);

    fn next(&mut self) -> Option<Self::Item> {
        self.settle();
        let Reverse(step) = self.frontier.pop()?;
        let Held::Fine(bucket) = step.held else {
            unreachable!("settle leaves a fine cell first in line");
        };
        Some((step.bound(), bucket))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use muster_schema::TimeWindow;
    use proptest::prelude::*;

    use super::*;

    const T0: i64 = 1_800_000_000_000_000;
    const KINDS: [Category; 3] = [Category::Food, Category::Transport, Category::Shelter];

    fn spec(lat_e6: i32, lon_e6: i32, kinds: Vec<Category>) -> OfferSpecV1 {
        OfferSpecV1 {
            kinds,
            skills: vec![],
            capacity: 1,
            location: GeoPoint { lat_e6, lon_e6 },
            travel_radius_m: 20_000,
            availability: vec![TimeWindow::new(T0, T0 + 1).expect("valid")],
        }
    }

    /// An offer as the test keeps it: where it is, what it serves, its level (`None`: removed).
    type Truth = BTreeMap<u32, Option<(GeoPoint, Vec<Category>, u8)>>;

    #[derive(Debug, Clone)]
    enum Op {
        Put {
            slot: u32,
            dlat: i32,
            dlon: i32,
            kinds: u8,
            level: u8,
        },
        Remove(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u32..60, -120_000i32..120_000, -200_000i32..200_000, 1u8..8, 0u8..5)
                .prop_map(|(slot, dlat, dlon, kinds, level)| Op::Put { slot, dlat, dlon, kinds, level }),
            1 => (0u32..60).prop_map(Op::Remove),
        ]
    }

    const CENTRE: GeoPoint = GeoPoint {
        lat_e6: 53_960_000,
        lon_e6: -1_080_000,
    };

    /// Where a property runs and how its searches treat the antimeridian: York with either
    /// seam (the same offers found), and beside the antimeridian in Fiji, joined.
    const SITES: [(GeoPoint, Seam); 3] = [
        (CENTRE, Seam::Edge),
        (CENTRE, Seam::Joined),
        (
            GeoPoint {
                lat_e6: -16_800_000,
                lon_e6: 179_980_000,
            },
            Seam::Joined,
        ),
    ];

    fn build(ops: &[Op], centre: GeoPoint) -> (SpatialIndex, Truth) {
        let mut index = SpatialIndex::default();
        let mut truth = Truth::new();
        for op in ops {
            match op {
                Op::Put {
                    slot,
                    dlat,
                    dlon,
                    kinds,
                    level,
                } => {
                    let kinds: Vec<Category> = KINDS
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| kinds & (1 << i) != 0)
                        .map(|(_, k)| *k)
                        .collect();
                    let at = geo::moved(centre, *dlat, *dlon);
                    let s = spec(at.lat_e6, at.lon_e6, kinds.clone());
                    index.insert(
                        *slot,
                        &s,
                        Class {
                            level: *level,
                            ..Class::default()
                        },
                        1,
                    );
                    truth.insert(*slot, Some((s.location, kinds, *level)));
                }
                Op::Remove(slot) => {
                    index.remove(*slot);
                    truth.insert(*slot, None);
                }
            }
        }
        (index, truth)
    }

    /// The offers of `kind` at `min_level` or above within `reach` of `at`, by brute force.
    fn within(
        truth: &Truth,
        kind: Category,
        min_level: u8,
        at: &GeoPoint,
        reach: u32,
    ) -> BTreeSet<u32> {
        truth
            .iter()
            .filter_map(|(slot, t)| {
                let (p, kinds, level) = t.as_ref()?;
                (kinds.contains(&kind) && *level >= min_level && geo::distance_m(at, p) <= reach)
                    .then_some(*slot)
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Whatever offers arrive, move and leave, both grids yield every offer in reach of the
        /// right class once, and the fine walk goes nearest first with bounds that never
        /// overstate a distance.
        #[test]
        fn both_grids_find_every_offer_in_reach_and_the_walk_goes_nearest_first(
            ops in proptest::collection::vec(op(), 1..120),
            dlat in -60_000i32..60_000,
            dlon in -100_000i32..100_000,
            reach in 0u32..15_000,
            min_level in 0u8..5,
            kind in 0usize..3,
            site in 0usize..SITES.len(),
        ) {
            let (centre, seam) = SITES[site];
            let (index, truth) = build(&ops, centre);
            let at = geo::moved(centre, dlat, dlon);
            let kind = KINDS[kind];
            let expected = within(&truth, kind, min_level, &at, reach.min(index.max_radius_m()));

            let coarse = index.candidates(kind, min_level, &at, reach, seam);
            let coarse_set: BTreeSet<u32> = coarse.iter().copied().collect();
            prop_assert!(expected.is_subset(&coarse_set));

            let mut walked = Vec::new();
            let mut last = 0;
            let mut walk = index.nearest(&at, reach, seam);
            while let Some(peeked) = walk.peek_bound() {
                let (bound, bucket) = walk.next().expect("a peeked cell comes next");
                prop_assert_eq!(bound, peeked);
                prop_assert!(bound >= last, "nearest first: {} after {}", bound, last);
                last = bound;
                for entry in bucket.serving(kind, min_level) {
                    let slot = entry.slot;
                    let (p, kinds, level) = truth[&slot].clone().expect("only live offers");
                    prop_assert_eq!(entry.at, p, "the entry's location is the offer's");
                    prop_assert!(kinds.contains(&kind) && level >= min_level);
                    prop_assert!(bound <= geo::distance_m(&at, &p), "the bound overstates");
                    walked.push(slot);
                }
            }
            let walked_set: BTreeSet<u32> = walked.iter().copied().collect();
            prop_assert_eq!(walked_set.len(), walked.len(), "an offer walked twice");
            prop_assert!(expected.is_subset(&walked_set));
            // Offers beyond reach are no reason to look further.
            prop_assert_eq!(walk.unvisited_bound(), None);
        }

        /// A walk limited short of its reach yields every offer within the limit, and what it
        /// leaves unvisited within reach is never nearer than it says.
        #[test]
        fn a_limited_walk_bounds_what_it_leaves_out(
            ops in proptest::collection::vec(op(), 1..120),
            dlat in -60_000i32..60_000,
            dlon in -100_000i32..100_000,
            reach in 0u32..15_000,
            limit_per_mille in 0u32..1_000,
            kind in 0usize..3,
            site in 0usize..SITES.len(),
        ) {
            let (centre, seam) = SITES[site];
            let (index, truth) = build(&ops, centre);
            let at = geo::moved(centre, dlat, dlon);
            let kind = KINDS[kind];
            let reach = reach.min(index.max_radius_m());
            let limit = reach / 1_000 * limit_per_mille;
            let mut walk = index.nearest(&at, reach, seam);
            walk.limit(limit);
            let mut walked = BTreeSet::new();
            for (_, bucket) in walk.by_ref() {
                walked.extend(bucket.serving(kind, 0).map(|e| e.slot));
            }
            prop_assert!(within(&truth, kind, 0, &at, limit).is_subset(&walked));
            let left: Vec<u32> = within(&truth, kind, 0, &at, reach)
                .into_iter()
                .filter(|slot| !walked.contains(slot))
                .map(|slot| geo::distance_m(&at, &truth[&slot].as_ref().expect("live").0))
                .collect();
            match walk.unvisited_bound() {
                None => prop_assert!(left.is_empty(), "offers at {:?} left unreported", left),
                Some(bound) => {
                    prop_assert!(bound > limit);
                    prop_assert!(left.iter().all(|d| *d >= bound), "{:?} nearer than {}", left, bound);
                }
            }
        }
    }

    #[test]
    fn removing_every_offer_leaves_an_empty_index() {
        let ops: Vec<Op> = (0..30)
            .map(|i| Op::Put {
                slot: i,
                dlat: i as i32 * 997,
                dlon: -(i as i32) * 1_733,
                kinds: 7,
                level: (i % 5) as u8,
            })
            .chain((0..30).map(Op::Remove))
            .collect();
        let (index, _) = build(&ops, CENTRE);
        assert!(
            index.cells.is_empty(),
            "{:?}",
            index.cells.keys().collect::<Vec<_>>()
        );
        assert!(index.placed.iter().all(Option::is_none));
        assert_eq!(
            index
                .nearest(&CENTRE, 20_000, Seam::Joined)
                .next()
                .map(|(b, _)| b),
            None
        );
    }
}
