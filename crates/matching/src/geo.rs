//! Distances in integer metres, computed without floating point so every machine agrees.
//!
//! Equirectangular approximation on a sphere of radius 6,371 km: accurate to well under 1% for the
//! tens of kilometres a volunteer travels. The cosine of the mean latitude comes from a table
//! built once from a fixed-point polynomial, not the platform's `libm`, whose last bits may
//! differ between systems; the square root is IEEE 754's, which every platform rounds the same.

use muster_schema::GeoPoint;

/// Metres per microdegree of latitude (and of longitude at the equator): 2π·6371000 / 360e6.
const MM_PER_MICRODEGREE: i128 = 111; // millimetres, rounded: 0.11119 m
const Q: i128 = 1 << 30; // fixed-point scale

/// cos(x) for x in microdegrees, |x| <= 90°, in Q30 fixed point (Taylor series to x^10).
fn cos_q30(micro: i64) -> i128 {
    // x in radians, Q30: micro * pi / 180e6.
    const PI_Q30: i128 = 3_373_259_426; // pi * 2^30
    let x = i128::from(micro) * PI_Q30 / 180_000_000;
    let x2 = x * x / Q;
    let mut term = Q; // x^0 / 0!
    let mut sum = Q;
    for k in 1..=5i128 {
        term = -term * x2 / Q / ((2 * k - 1) * (2 * k));
        sum += term;
    }
    sum.clamp(0, Q)
}

/// cos of every latitude in steps of 0.01°, 0° to 90°, in Q30.
fn cos_table() -> &'static [i128] {
    static TABLE: std::sync::OnceLock<Vec<i128>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| (0..=9_000).map(|i| cos_q30(i * 10_000)).collect())
}

/// Distance between two points in whole metres.
pub fn distance_m(a: &GeoPoint, b: &GeoPoint) -> u32 {
    let dlat = i64::from(a.lat_e6) - i64::from(b.lat_e6);
    let mut dlon = (i64::from(a.lon_e6) - i64::from(b.lon_e6)).abs();
    if dlon > 180_000_000 {
        dlon = 360_000_000 - dlon; // across the antimeridian
    }
    let mid = ((i64::from(a.lat_e6) + i64::from(b.lat_e6)) / 2).unsigned_abs();
    let cos = cos_table()[(mid / 10_000).min(9_000) as usize];
    let dy_mm = i128::from(dlat) * MM_PER_MICRODEGREE;
    let dx_mm = (i128::from(dlon) * MM_PER_MICRODEGREE * cos) >> 30;
    // |dx|, |dy| < 2^36 mm: exact as i64 and as f64 (through i64: no slow i128 conversion);
    // products, sum and sqrt are IEEE-rounded the same on every platform.
    let (dx, dy) = (dx_mm as i64 as f64, dy_mm as i64 as f64);
    let mm = (dx * dx + dy * dy).sqrt();
    (mm / 1000.0) as u32
}

/// Grid cells of the spatial index: 0.05° of latitude by 0.05° of longitude.
pub const CELL_MICRODEGREES: i32 = 50_000;

/// How a search treats the antimeridian (±180° of longitude), where cell columns restart.
///
/// Engines 1 to 5 search as if the grid ended there: a need at 179.99°E never found an offer at
/// 179.99°W two kilometres away (Fiji's islands straddle it, as do Chukotka and the Aleutians).
/// Engine 6 searches across it. Both file points in the same cells (a point at exactly 180° in
/// the column east of 179.95°, as it always was), so the index serves either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seam {
    /// The grid ends at ±180°: what engines 1 to 5 decided with, kept for their audit.
    Edge,
    /// Columns on either side of ±180° are neighbours, as on the Earth.
    Joined,
}

/// Microdegrees of longitude around the Earth.
const TURN: i64 = 360_000_000;

/// The cell a point falls in.
pub fn cell(p: &GeoPoint) -> (i32, i32) {
    (
        p.lat_e6.div_euclid(CELL_MICRODEGREES),
        p.lon_e6.div_euclid(CELL_MICRODEGREES),
    )
}

/// A lower bound on [`distance_m`] from `p` to any point of `cell`: never more than the distance
/// the rules compute for an offer in that cell, so a search may skip cells by it.
pub fn min_distance_to_cell_m(p: &GeoPoint, cell: (i32, i32), seam: Seam) -> u32 {
    min_distance_to_square_m(p, cell, CELL_MICRODEGREES, seam)
}

/// Fine cells of the spatial index: 0.005° by 0.005°, ten by ten to a [`cell`]. A dense town's
/// nearest volunteers are a few fine cells away; a coarse cell there holds thousands.
pub const FINE_CELL_MICRODEGREES: i32 = 5_000;

/// The fine cell a point falls in; `fine.div_euclid(10)` is its coarse [`cell`].
pub fn fine_cell(p: &GeoPoint) -> (i32, i32) {
    (
        p.lat_e6.div_euclid(FINE_CELL_MICRODEGREES),
        p.lon_e6.div_euclid(FINE_CELL_MICRODEGREES),
    )
}

/// The coarse [`cell`] a fine cell lies in.
pub fn coarse_of(fine: (i32, i32)) -> (i32, i32) {
    let k = CELL_MICRODEGREES / FINE_CELL_MICRODEGREES;
    (fine.0.div_euclid(k), fine.1.div_euclid(k))
}

/// As [`min_distance_to_cell_m`], for a fine cell.
pub fn min_distance_to_fine_cell_m(p: &GeoPoint, fine: (i32, i32), seam: Seam) -> u32 {
    min_distance_to_square_m(p, fine, FINE_CELL_MICRODEGREES, seam)
}

/// A lower bound on [`distance_m`] from `p` to any point of the square `cell` of a grid of
/// `size` microdegrees.
fn min_distance_to_square_m(p: &GeoPoint, cell: (i32, i32), size: i32, seam: Seam) -> u32 {
    let row = SquareRow::new(p, cell.0, size);
    row.bound(lon_gap(p, cell.1, size, seam))
}

/// How far (in microdegrees, 0 inside) `value` lies from the span `[lo, lo + size]`.
fn gap(value: i64, lo: i64, size: i32) -> i64 {
    let hi = lo + i64::from(size);
    if value < lo {
        lo - value
    } else if value > hi {
        value - hi
    } else {
        0
    }
}

/// The longitude gap from `p` to column `col` of a grid of `size` microdegrees: the shorter way
/// round when the seam is [`Seam::Joined`] (as [`distance_m`] measures it).
fn lon_gap(p: &GeoPoint, col: i32, size: i32, seam: Seam) -> i64 {
    let (lon, lo) = (i64::from(p.lon_e6), i64::from(col) * i64::from(size));
    let direct = gap(lon, lo, size);
    match seam {
        Seam::Edge => direct,
        Seam::Joined => direct
            .min(gap(lon, lo - TURN, size))
            .min(gap(lon, lo + TURN, size)),
    }
}

/// What a square's distance bound takes from its row alone: the latitude gap and the cosine.
#[derive(Debug, Clone, Copy)]
struct SquareRow {
    dy_mm: f64,
    cos: i128,
}

impl SquareRow {
    fn new(p: &GeoPoint, row: i32, size: i32) -> Self {
        let lat0 = i64::from(row) * i64::from(size);
        let lat1 = lat0 + i64::from(size);
        let plat = i64::from(p.lat_e6);
        let dlat = gap(plat, lat0, size);
        // The smallest cosine any mean latitude of p and a point of the square can have: the
        // most poleward latitude involved, rounded poleward in the table.
        let poleward = plat.abs().max(lat0.abs()).max(lat1.abs()).min(90_000_000) as u64;
        let cos = cos_table()[(poleward.div_ceil(10_000)).min(9_000) as usize];
        // As in distance_m: below 2^36 mm, exact through i64.
        let dy_mm = (i128::from(dlat) * MM_PER_MICRODEGREE) as i64 as f64;
        Self { dy_mm, cos }
    }

    /// The bound for the square of this row `dlon` microdegrees of longitude away.
    fn bound(&self, dlon: i64) -> u32 {
        let dx = ((i128::from(dlon) * MM_PER_MICRODEGREE * self.cos) >> 30) as i64 as f64;
        let mm = (dx * dx + self.dy_mm * self.dy_mm).sqrt();
        ((mm / 1000.0) as u32).saturating_sub(1)
    }
}

/// [`min_distance_to_fine_cell_m`] for the fine cells of one coarse cell, each row's and
/// column's part worked out once: what opening a coarse cell costs a nearest-first walk.
#[derive(Debug, Clone)]
pub struct FineBounds {
    first: (i32, i32),
    rows: [SquareRow; FINE_PER_CELL],
    cols: [i64; FINE_PER_CELL],
}

/// Fine cells along each side of a coarse cell.
pub const FINE_PER_CELL: usize = (CELL_MICRODEGREES / FINE_CELL_MICRODEGREES) as usize;

impl FineBounds {
    /// The bounds from `p` to the fine cells of the coarse `cell`.
    pub fn new(p: &GeoPoint, cell: (i32, i32), seam: Seam) -> Self {
        let k = FINE_PER_CELL as i32;
        let first = (cell.0 * k, cell.1 * k);
        Self {
            first,
            rows: std::array::from_fn(|i| {
                SquareRow::new(p, first.0 + i as i32, FINE_CELL_MICRODEGREES)
            }),
            cols: std::array::from_fn(|j| {
                lon_gap(p, first.1 + j as i32, FINE_CELL_MICRODEGREES, seam)
            }),
        }
    }

    /// Where `fine`, one of the coarse cell's, lies in it: row and column.
    pub fn place(&self, fine: (i32, i32)) -> (usize, usize) {
        (
            (fine.0 - self.first.0) as usize,
            (fine.1 - self.first.1) as usize,
        )
    }

    /// How far (microdegrees of longitude) column `j` is: the bounds of a row's cells rise
    /// with it.
    pub fn col_gap(&self, j: usize) -> i64 {
        self.cols[j]
    }

    /// Exactly [`min_distance_to_fine_cell_m`] for the fine cell at row `i`, column `j`.
    pub fn bound_at(&self, i: usize, j: usize) -> u32 {
        self.rows[i].bound(self.cols[j])
    }

    /// Exactly [`min_distance_to_fine_cell_m`] for `fine`, one of the coarse cell's.
    pub fn bound(&self, fine: (i32, i32)) -> u32 {
        let (i, j) = self.place(fine);
        self.bound_at(i, j)
    }
}

/// The cells that may hold a point within `radius_m` of `p` (a superset: callers check distance).
/// With the seam [`Seam::Joined`], columns past ±180° are the ones on the other side, and the
/// column of points at exactly 180° comes with the one starting at -180°.
pub fn cells_within(p: &GeoPoint, radius_m: u32, seam: Seam) -> impl Iterator<Item = (i32, i32)> {
    let (cl, cn) = cell(p);
    let per_cell_lat_m = i128::from(CELL_MICRODEGREES) * MM_PER_MICRODEGREE / 1000;
    // Longitude cells shrink towards the poles; use the latitude nearest the pole the radius
    // can reach, so the range is never too small.
    let reach = i64::from(p.lat_e6.unsigned_abs()) + i64::from(radius_m) * 1000 / 111 + 1;
    let cos = cos_q30(reach.min(89_000_000)).max(Q / 1000);
    let per_cell_lon_m = (per_cell_lat_m * cos / Q).max(1);
    let dl = i32::try_from(i128::from(radius_m) / per_cell_lat_m + 1).unwrap_or(i32::MAX / 4);
    // At most 36° each way, so no column comes twice when joined.
    let dn = i32::try_from(i128::from(radius_m) / per_cell_lon_m + 1)
        .unwrap_or(i32::MAX / 4)
        .min(3600 / 5 + 1);
    let half = (TURN / 2 / i64::from(CELL_MICRODEGREES)) as i32;
    let column = move |c: i32| match seam {
        Seam::Edge => (c, None),
        Seam::Joined => {
            let c = (c + half).rem_euclid(2 * half) - half;
            (c, (c == -half).then_some(half))
        }
    };
    (cl - dl..=cl + dl).flat_map(move |a| {
        (cn - dn..=cn + dn).flat_map(move |c| {
            let (c, also) = column(c);
            std::iter::once((a, c)).chain(also.map(|b| (a, b)))
        })
    })
}

/// `p` moved by `dlat` and `dlon` microdegrees, longitudes past ±180° taken round to the other
/// side (for tests that scatter points about a place, the antimeridian included).
#[cfg(test)]
pub(crate) fn moved(p: GeoPoint, dlat: i32, dlon: i32) -> GeoPoint {
    let lon = i64::from(p.lon_e6) + i64::from(dlon);
    let lon = if lon > TURN / 2 {
        lon - TURN
    } else if lon < -TURN / 2 {
        lon + TURN
    } else {
        lon
    };
    GeoPoint {
        lat_e6: p.lat_e6 + dlat,
        lon_e6: lon as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(lat: f64, lon: f64) -> GeoPoint {
        GeoPoint::from_degrees(lat, lon).expect("valid")
    }

    #[test]
    fn distances_match_known_ones_closely() {
        // York to Leeds: about 35.6 km great-circle.
        let d = distance_m(&p(53.958, -1.080), &p(53.800, -1.549));
        assert!((35_000..36_200).contains(&d), "{d}");
        // One degree of latitude: about 111.2 km.
        let d = distance_m(&p(50.0, 0.0), &p(51.0, 0.0));
        assert!((111_000..111_300).contains(&d), "{d}");
        assert_eq!(distance_m(&p(53.9, -1.1), &p(53.9, -1.1)), 0);
    }

    #[test]
    fn cosine_is_accurate_enough() {
        // cos 60° = 0.5
        let c = cos_q30(60_000_000) as f64 / Q as f64;
        assert!((c - 0.5).abs() < 1e-6, "{c}");
        assert_eq!(cos_q30(0), Q);
    }

    /// 20,000 points scattered around `centre`, within `half_lat` and `half_lon` microdegrees
    /// (longitudes past ±180° taken round to the other side).
    fn scattered(centre: GeoPoint, seed: u64, half_lat: i64, half_lon: i64) -> Vec<GeoPoint> {
        let mut state = seed;
        (0..20_000)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                let dlat = (state >> 33) as i64 % (2 * half_lat) - half_lat;
                let dlon = (state >> 13) as i64 % (2 * half_lon) - half_lon;
                moved(centre, dlat as i32, dlon as i32)
            })
            .collect()
    }

    /// Where the bounds are checked: York with either seam, and beside the antimeridian (in
    /// Fiji, and at exactly 180°) joined.
    fn centres() -> Vec<(GeoPoint, Seam)> {
        vec![
            (p(53.9601, -1.0001), Seam::Edge),
            (p(53.9601, -1.0001), Seam::Joined),
            (p(-16.5001, 179.9801), Seam::Joined),
            (p(-16.5001, -179.9899), Seam::Joined),
            (p(65.0, 180.0), Seam::Joined),
        ]
    }

    #[test]
    fn the_cell_bound_never_exceeds_a_real_distance() {
        for (centre, seam) in centres() {
            for q in scattered(centre, 12_345, 150_000, 250_000) {
                assert!(
                    min_distance_to_cell_m(&centre, cell(&q), seam) <= distance_m(&centre, &q),
                    "{centre:?} {seam:?} {q:?}"
                );
            }
            assert_eq!(min_distance_to_cell_m(&centre, cell(&centre), seam), 0);
        }
    }

    #[test]
    fn the_fine_cell_bound_never_exceeds_a_real_distance_and_fine_cells_nest() {
        for (centre, seam) in centres() {
            for q in scattered(centre, 54_321, 30_000, 50_000) {
                let fine = fine_cell(&q);
                assert!(
                    min_distance_to_fine_cell_m(&centre, fine, seam) <= distance_m(&centre, &q),
                    "{centre:?} {seam:?} {q:?}"
                );
                // A fine cell lies in its point's coarse cell, and is no nearer than it.
                assert_eq!(coarse_of(fine), cell(&q));
                assert!(
                    min_distance_to_cell_m(&centre, cell(&q), seam)
                        <= min_distance_to_fine_cell_m(&centre, fine, seam)
                );
            }
        }
        // Across the prime meridian and the equator, too.
        let q = p(-0.0001, -0.0001);
        assert_eq!(coarse_of(fine_cell(&q)), cell(&q));
    }

    #[test]
    fn a_coarse_cells_fine_bounds_are_exactly_the_fine_cell_bound() {
        let more = [
            (p(-0.0001, 0.0002), Seam::Edge),
            (p(-33.87, 151.21), Seam::Edge),
        ];
        for (centre, seam) in centres().into_iter().chain(more) {
            for q in scattered(centre, 777, 60_000, 100_000) {
                let coarse = cell(&q);
                let fine = fine_cell(&q);
                for cell in [coarse, cell(&centre)] {
                    let bounds = FineBounds::new(&centre, cell, seam);
                    let k = FINE_PER_CELL as i32;
                    let in_cell = (
                        cell.0 * k + fine.0.rem_euclid(k),
                        cell.1 * k + fine.1.rem_euclid(k),
                    );
                    assert_eq!(
                        bounds.bound(in_cell),
                        min_distance_to_fine_cell_m(&centre, in_cell, seam),
                        "{centre:?} {in_cell:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_cells_searched_cover_every_point_within_the_radius() {
        let centre = p(53.96, -1.08);
        for (dlat, dlon) in [(0.089, 0.0), (0.0, 0.149), (-0.06, -0.1), (0.05, 0.12)] {
            let q = p(53.96 + dlat, -1.08 + dlon);
            let d = distance_m(&centre, &q);
            for seam in [Seam::Edge, Seam::Joined] {
                assert!(
                    cells_within(&centre, d + 1, seam).any(|c| c == cell(&q)),
                    "{dlat},{dlon} at {d} m"
                );
            }
        }
    }

    #[test]
    fn joined_the_cells_searched_reach_across_the_antimeridian() {
        // On Fiji's Taveuni (179.9°W–180°) and its neighbour across the line, 2 km apart; and
        // a point at exactly 180°, filed in the column east of 179.95°E.
        for (a, b) in [
            (p(-16.8, 179.99), p(-16.8, -179.99)),
            (p(-16.8, -179.99), p(-16.8, 179.99)),
            (p(-16.8, 179.99), p(-16.8, 180.0)),
            (p(-16.8, -179.99), p(-16.8, 180.0)),
            (p(-16.8, 180.0), p(-16.8, -179.97)),
            (p(-16.8, 180.0), p(-16.8, 179.97)),
        ] {
            let d = distance_m(&a, &b);
            assert!(d < 4_000, "{a:?} {b:?} {d}");
            let found: Vec<_> = cells_within(&a, d + 1, Seam::Joined).collect();
            assert!(found.contains(&cell(&b)), "{a:?} {b:?} at {d} m");
            let unique: std::collections::BTreeSet<_> = found.iter().collect();
            assert_eq!(unique.len(), found.len(), "a cell searched twice");
            assert!(min_distance_to_cell_m(&a, cell(&b), Seam::Joined) <= d);
        }
        // As engines 1 to 5 searched: the line is an edge.
        let (a, b) = (p(-16.8, 179.99), p(-16.8, -179.99));
        assert!(!cells_within(&a, 5_000, Seam::Edge).any(|c| c == cell(&b)));
    }
}
