//! The exact solver: maximum-weight bipartite matching on a sparse graph.
//!
//! Rows are needs, columns are providers; each row lists its candidate columns with an integer
//! weight > 0. Each row gets at most one column and each column at most one row, and the total
//! weight is the largest possible — exactly, not approximately.
//!
//! Method: successive shortest augmenting paths with potentials (the Hungarian method with
//! Dijkstra), one row at a time. Every row also has a private "unmatched" column of weight 0, so
//! leaving a row unmatched is always possible and a perfect assignment of rows exists; the
//! min-cost perfect assignment with costs `-weight` is the maximum-weight matching. Each search
//! stops at the first free column it settles; since the row's own unmatched column is free at
//! label 0, a search only explores columns that could improve the total, which keeps it local on
//! sparse instances.
//!
//! Deterministic: integer arithmetic, rows in index order, heap ties broken by column index.
//!
//! Rows alike — the same columns, weights that differ by one constant (needs at one place,
//! differing only in urgency or waiting) — are spread out by a search only once: after one row
//! of a class, the others cannot lower any label (see [`Classes`]). The result is the same as
//! spreading each out; a crowd of needs alike costs one row per search instead of every
//! matched one (a round of 1,000 needs at one place: 1.1 s to 0.2 s).
//!
//! Duals: with costs `c = -weight`, the potentials `u` (rows) and `v` (columns) the search keeps
//! satisfy `c - u_i - v_j >= 0` on every edge, with equality on the matched ones, and `v_j <= 0`
//! (potentials of columns only ever fall, and only columns that end matched move). They prove
//! the matching optimal, and [`Solved::row_bound`] says how much a row could gain from an edge
//! the instance left out: an edge of weight `w <= -u_i` cannot improve it, whatever its column.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A sparse instance: `rows[i]` lists `(column, weight)` with `column < columns`, `weight > 0`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Instance {
    pub columns: usize,
    pub rows: Vec<Vec<(usize, i64)>>,
}

/// The column each row got (`None`: unmatched) and the total weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Solution {
    pub assigned: Vec<Option<usize>>,
    pub total: i64,
}

/// A solution with the duals that prove it optimal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Solved {
    pub solution: Solution,
    /// Row potentials `u`.
    pub rows: Vec<i64>,
    /// Potentials `v` of the real columns (all `<= 0`).
    pub columns: Vec<i64>,
}

impl Solved {
    /// The largest weight an edge of row `i` missing from the instance may have without
    /// making the solution suboptimal (`-u_i`): any such edge has non-negative reduced cost
    /// against every column, since every `v_j <= 0`, and a new column can take `v_j = 0`.
    pub fn row_bound(&self, i: usize) -> i64 {
        -self.rows[i]
    }
}

const FREE: usize = usize::MAX;

/// Rows alike: row `i` is in class `of[i]`, its weights its class's first row's plus
/// `offset[i]`. Spreading row `i` out from label `d` offers column `j` the label
/// `(d - offset[i] - u_i) + (-w_first(j)) - v_j`: of two rows of a class, the one with the
/// lower `d - offset - u` offers every column at least as low a label as the other, so the
/// search skips a row whose `d - offset - u` is no lower than one already spread out.
///
/// In fact every row of a class a search reaches has the same `d - offset - u` (and the row
/// searched from, `-offset`): each matched row is tight on its column and its class-mates'
/// reduced costs are its own, so its column is a class-mate's nearest in reduced terms and is
/// reached at exactly that label. Only the first row of a class a search reaches is spread out;
/// the comparison keeps the skip safe on its own argument.
struct Classes {
    of: Vec<usize>,
    offset: Vec<i64>,
    count: usize,
}

/// Rows shorter than this are classes of their own: spreading one out again costs little, and
/// a solve over short lists (most rounds) is not slowed by fingerprinting them.
const CLASS_FROM: usize = 16;

/// One step of a fast, fixed hash (FxHash's): fingerprints of rows, computed every solve.
fn mix(h: u64, x: u64) -> u64 {
    (h.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95)
}

impl Classes {
    /// Rows of at least `from` columns in classes; shorter rows each a class of its own.
    fn of(instance: &Instance, from: usize) -> Self {
        let rows = &instance.rows;
        let first_weight = |i: usize| rows[i].first().map_or(0, |&(_, w)| w);
        let alike = |a: usize, b: usize| {
            let (wa, wb) = (first_weight(a), first_weight(b));
            rows[a].len() == rows[b].len()
                && rows[a]
                    .iter()
                    .zip(&rows[b])
                    .all(|(x, y)| x.0 == y.0 && x.1 - wa == y.1 - wb)
        };
        // The first class of each fingerprint; looked up, never iterated, so class numbers
        // follow the rows' order. A row whose fingerprint is another shape's (a collision)
        // is a class of its own: only the saving is lost.
        let mut by_print: std::collections::HashMap<u64, usize> = Default::default();
        let mut first_of: Vec<usize> = Vec::new();
        let mut of = Vec::with_capacity(rows.len());
        let mut offset = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let w0 = first_weight(i);
            let class = if row.len() < from {
                None
            } else {
                let print = row.iter().fold(row.len() as u64, |h, &(j, w)| {
                    mix(mix(h, j as u64), (w - w0) as u64)
                });
                match by_print.get(&print) {
                    Some(&k) if alike(first_of[k], i) => Some(k),
                    Some(_) => None,
                    None => {
                        by_print.insert(print, first_of.len());
                        None
                    }
                }
            };
            let class = class.unwrap_or_else(|| {
                first_of.push(i);
                first_of.len() - 1
            });
            of.push(class);
            offset.push(w0 - first_weight(first_of[class]));
        }
        Self {
            of,
            offset,
            count: first_of.len(),
        }
    }

    /// Every row a class of its own: each spread out wherever a search reaches it.
    #[cfg(test)]
    fn none(rows: usize) -> Self {
        Self {
            of: (0..rows).collect(),
            offset: vec![0; rows],
            count: rows,
        }
    }
}

/// Solves `instance` exactly.
pub fn solve(instance: &Instance) -> Solution {
    solve_with_duals(instance).solution
}

/// Solves `instance` exactly, keeping the duals.
pub fn solve_with_duals(instance: &Instance) -> Solved {
    solve_in_classes(instance, Classes::of(instance, CLASS_FROM))
}

/// [`solve_with_duals`], each row spreading out only as its class allows.
fn solve_in_classes(instance: &Instance, classes: Classes) -> Solved {
    let n = instance.rows.len();
    let m = instance.columns;
    // Columns 0..m are real; column m + i is row i's private "unmatched" column.
    let cols = m + n;
    let mut v = vec![0i64; cols];
    let mut u = vec![0i64; n];
    let mut row_of = vec![FREE; cols];
    let mut col_of = vec![FREE; n];
    // Per-search scratch, reset through `touched` so each search costs what it explores.
    let mut label = vec![i64::MAX; cols];
    let mut via = vec![FREE; cols]; // the column whose row reached this column (FREE: the new row)
    let mut settled = vec![false; cols];
    let mut touched: Vec<usize> = Vec::new();
    let mut done: Vec<usize> = Vec::new();
    let mut heap: BinaryHeap<Reverse<(i64, usize)>> = BinaryHeap::new();
    // Per search: the lowest `d - offset - u` a row of each class was spread out from.
    let mut spread = vec![i64::MAX; classes.count];
    let mut spread_touched: Vec<usize> = Vec::new();

    let edges = |i: usize| {
        instance.rows[i]
            .iter()
            .map(|&(j, w)| (j, -w))
            .chain(std::iter::once((m + i, 0)))
    };

    for r in 0..n {
        heap.clear();
        let k = classes.of[r];
        spread[k] = -classes.offset[r];
        spread_touched.push(k);
        for (j, c) in edges(r) {
            let l = c - v[j];
            if l < label[j] {
                if label[j] == i64::MAX {
                    touched.push(j);
                }
                label[j] = l;
                via[j] = FREE;
                heap.push(Reverse((l, j)));
            }
        }
        let (target, dist) = loop {
            let Some(Reverse((d, j))) = heap.pop() else {
                unreachable!("row {r}'s own unmatched column is always reachable")
            };
            if settled[j] || d > label[j] {
                continue;
            }
            settled[j] = true;
            done.push(j);
            let i = row_of[j];
            if i == FREE {
                break (j, d);
            }
            let k = classes.of[i];
            let from = d - classes.offset[i] - u[i];
            // Where a row of its class was spread out from lower, only this row's own
            // unmatched column can learn anything from it.
            let real: &[(usize, i64)] = if from < spread[k] {
                if spread[k] == i64::MAX {
                    spread_touched.push(k);
                }
                spread[k] = from;
                &instance.rows[i]
            } else {
                &[]
            };
            let edges = real
                .iter()
                .map(|&(j, w)| (j, -w))
                .chain(std::iter::once((m + i, 0)));
            for (j2, c) in edges {
                if settled[j2] {
                    continue;
                }
                let l = d + c - u[i] - v[j2];
                if l < label[j2] {
                    if label[j2] == i64::MAX {
                        touched.push(j2);
                    }
                    label[j2] = l;
                    via[j2] = j;
                    heap.push(Reverse((l, j2)));
                }
            }
        };
        // Dual update: settled columns move by how much closer they were than the target.
        for &j in &done {
            let delta = dist - label[j];
            v[j] -= delta;
            if row_of[j] != FREE {
                u[row_of[j]] += delta;
            }
        }
        u[r] = dist;
        // Augment along the path back to row r.
        let mut j = target;
        loop {
            let from = via[j];
            let i = if from == FREE { r } else { row_of[from] };
            row_of[j] = i;
            col_of[i] = j;
            if from == FREE {
                break;
            }
            j = from;
        }
        for &j in &touched {
            label[j] = i64::MAX;
            via[j] = FREE;
            settled[j] = false;
        }
        touched.clear();
        done.clear();
        for &k in &spread_touched {
            spread[k] = i64::MAX;
        }
        spread_touched.clear();
    }

    let mut total = 0;
    let assigned = (0..n)
        .map(|i| {
            let j = col_of[i];
            if j < m {
                total += instance.rows[i]
                    .iter()
                    .find(|&&(c, _)| c == j)
                    .map_or(0, |&(_, w)| w);
                Some(j)
            } else {
                None
            }
        })
        .collect();
    v.truncate(m);
    Solved {
        solution: Solution { assigned, total },
        rows: u,
        columns: v,
    }
}

/// The first-come greedy baseline: rows in order, each takes its best free column.
pub fn greedy(instance: &Instance) -> Solution {
    let mut taken = vec![false; instance.columns];
    let mut total = 0;
    let assigned = instance
        .rows
        .iter()
        .map(|row| {
            let best = row
                .iter()
                .filter(|(j, _)| !taken[*j])
                .max_by_key(|&&(j, w)| (w, std::cmp::Reverse(j)))?;
            taken[best.0] = true;
            total += best.1;
            Some(best.0)
        })
        .collect();
    Solution { assigned, total }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The optimum by trying every matching: for tiny instances only.
    fn brute_force(inst: &Instance) -> i64 {
        fn go(inst: &Instance, i: usize, taken: &mut Vec<bool>) -> i64 {
            if i == inst.rows.len() {
                return 0;
            }
            let mut best = go(inst, i + 1, taken);
            for &(j, w) in &inst.rows[i] {
                if !taken[j] {
                    taken[j] = true;
                    best = best.max(w + go(inst, i + 1, taken));
                    taken[j] = false;
                }
            }
            best
        }
        go(inst, 0, &mut vec![false; inst.columns])
    }

    fn valid(inst: &Instance, s: &Solution) {
        let mut used = vec![false; inst.columns];
        let mut total = 0;
        for (i, a) in s.assigned.iter().enumerate() {
            if let Some(j) = *a {
                assert!(!used[j], "column {j} used twice");
                used[j] = true;
                total += inst.rows[i]
                    .iter()
                    .find(|e| e.0 == j)
                    .expect("assigned a candidate")
                    .1;
            }
        }
        assert_eq!(total, s.total);
    }

    #[test]
    fn greedy_first_come_loses_where_the_exact_solve_does_not() {
        // Two needs, one vetted carer who can serve both, one who can serve only the first.
        let inst = Instance {
            columns: 2,
            rows: vec![vec![(0, 10), (1, 9)], vec![(0, 8)]],
        };
        let exact = solve(&inst);
        assert_eq!(exact.assigned, vec![Some(1), Some(0)]);
        assert_eq!(exact.total, 17);
        assert_eq!(greedy(&inst).total, 10);
    }

    #[test]
    fn a_row_with_no_candidates_stays_unmatched() {
        let inst = Instance {
            columns: 1,
            rows: vec![vec![], vec![(0, 5)]],
        };
        assert_eq!(solve(&inst).assigned, vec![None, Some(0)]);
    }

    #[test]
    fn leaving_a_row_unmatched_is_chosen_when_it_pays() {
        // Matching row 0 to column 0 would block row 1's much better use of it.
        let inst = Instance {
            columns: 1,
            rows: vec![vec![(0, 1)], vec![(0, 100)]],
        };
        let s = solve(&inst);
        assert_eq!(s.assigned, vec![None, Some(0)]);
        assert_eq!(s.total, 100);
    }

    fn instances() -> impl Strategy<Value = Instance> {
        (1usize..7, 1usize..7).prop_flat_map(|(rows, columns)| {
            proptest::collection::vec(
                proptest::collection::btree_map(0..columns, 1i64..50, 0..=columns),
                rows,
            )
            .prop_map(move |rows| Instance {
                columns,
                rows: rows.into_iter().map(|m| m.into_iter().collect()).collect(),
            })
        })
    }

    /// Rows alike: a few shapes (columns and weights), each copied with its weights moved by
    /// a constant (at least five copies of at most four shapes, so two are alike), shuffled
    /// among rows of their own.
    fn crowds() -> impl Strategy<Value = Instance> {
        (2usize..16).prop_flat_map(|columns| {
            let shape = proptest::collection::btree_map(0..columns, 1i64..20, 1..=columns);
            (
                proptest::collection::vec(shape.clone(), 1..4),
                proptest::collection::vec((0usize..4, 0i64..6, any::<u16>()), 5..60),
                proptest::collection::vec((shape, any::<u16>()), 0..6),
            )
                .prop_map(move |(shapes, copies, own)| {
                    let mut rows: Vec<(u16, Vec<(usize, i64)>)> = copies
                        .into_iter()
                        .map(|(s, lift, at)| {
                            let shape = &shapes[s % shapes.len()];
                            (at, shape.iter().map(|(&j, &w)| (j, w + lift)).collect())
                        })
                        .chain(own.into_iter().map(|(m, at)| (at, m.into_iter().collect())))
                        .collect();
                    rows.sort_by_key(|(at, _)| *at);
                    Instance {
                        columns,
                        rows: rows.into_iter().map(|(_, r)| r).collect(),
                    }
                })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Spreading out one row per class in a search changes nothing: the same matching and
        /// the same duals as spreading out every row a search reaches.
        #[test]
        fn rows_alike_solve_as_if_each_were_spread_out(inst in crowds()) {
            let classes = Classes::of(&inst, 1);
            prop_assert!(classes.count < inst.rows.len());
            let fast = solve_in_classes(&inst, classes);
            let each = solve_in_classes(&inst, Classes::none(inst.rows.len()));
            valid(&inst, &fast.solution);
            prop_assert_eq!(fast, each);
        }

        #[test]
        fn the_solver_finds_the_brute_force_optimum(inst in instances()) {
            let s = solve(&inst);
            valid(&inst, &s);
            prop_assert_eq!(s.total, brute_force(&inst));
            let g = greedy(&inst);
            valid(&inst, &g);
            prop_assert!(g.total <= s.total);
        }

        #[test]
        fn the_solver_is_deterministic(inst in instances()) {
            prop_assert_eq!(solve(&inst), solve(&inst));
        }

        #[test]
        fn the_duals_are_feasible_and_tight_on_the_matching(inst in instances()) {
            let s = solve_with_duals(&inst);
            for (i, row) in inst.rows.iter().enumerate() {
                for &(j, w) in row {
                    let reduced = -w - s.rows[i] - s.columns[j];
                    prop_assert!(reduced >= 0, "edge ({}, {}) reduced cost {}", i, j, reduced);
                    if s.solution.assigned[i] == Some(j) {
                        prop_assert_eq!(reduced, 0);
                    }
                }
                // The row's own "unmatched" column (cost 0) is free with potential 0 when the
                // row is matched, so u_i <= 0; when the row takes it, u_i = -v >= 0.
                if s.solution.assigned[i].is_some() {
                    prop_assert!(s.rows[i] <= 0);
                } else {
                    prop_assert!(s.rows[i] >= 0);
                }
            }
            prop_assert!(s.columns.iter().all(|&v| v <= 0));
        }

        /// Dropping edges a row's bound covers never changes the optimum: the certificate the
        /// rounds rely on when they start from short candidate lists.
        #[test]
        fn edges_within_the_row_bounds_cannot_improve_a_restricted_solution(
            inst in instances(),
            keep in 1usize..4,
        ) {
            let restricted = Instance {
                columns: inst.columns,
                rows: inst
                    .rows
                    .iter()
                    .map(|row| {
                        let mut r = row.clone();
                        r.sort_by_key(|&(j, w)| (std::cmp::Reverse(w), j));
                        r.truncate(keep);
                        r.sort_unstable();
                        r
                    })
                    .collect(),
            };
            let s = solve_with_duals(&restricted);
            let certified = inst.rows.iter().enumerate().all(|(i, row)| {
                row.iter()
                    .filter(|e| !restricted.rows[i].contains(e))
                    .all(|&(_, w)| w <= s.row_bound(i))
            });
            if certified {
                prop_assert_eq!(s.solution.total, brute_force(&inst));
            }
        }
    }
}
