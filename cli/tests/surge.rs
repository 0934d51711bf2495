//! The small surge CI runs: every scenario (flood, pandemic, hosting) at a few thousand events,
//! driven through `muster up`'s public gRPC API by the surge simulator, with volunteers who
//! accept, decline and ignore. Afterwards the invariants are checked against the log itself and
//! the projections: no capacity exceeded, no verification rule broken, no acknowledged event
//! missing from the projections, every matchable need matched (and none unmatchable proposed).

use muster_loadtest::surge::{self, Config, Muster, Report, Scenario};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_scenario_holds_its_invariants_through_muster_up() {
    let data = tempfile::tempdir().expect("tempdir");
    let muster = Muster::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_muster")),
        data.path(),
        &["--tick-s", "1"],
    )
    .await
    .expect("muster up");
    // The three incidents run at once: the minute an ignored proposal takes to expire is shared.
    let runs = [Scenario::Flood, Scenario::Pandemic, Scenario::Hosting].map(|s| {
        let config = Config::small(s, &muster.grpc, Some(muster.nats_url.clone()));
        tokio::spawn(surge::drive(config))
    });
    let mut reports: Vec<Report> = Vec::new();
    for run in runs {
        reports.push(run.await.expect("surge task").expect("surge"));
    }
    let reports_dir = tempfile::tempdir().expect("tempdir");
    for r in &reports {
        let names: Vec<&str> = r.invariants.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "no acknowledged event missing from the projections",
                "no capacity exceeded",
                "one live assignment per need",
                "no verification rule broken",
                "no one re-proposed a need they declined",
                "every matchable need matched",
            ],
            "{}",
            r.scenario
        );
        for i in &r.invariants {
            assert!(i.held, "{}: {}: {}", r.scenario, i.name, i.detail);
            assert!(i.checked > 0, "{}: {} checked nothing", r.scenario, i.name);
        }
        let o = &r.outcome;
        assert_eq!(o.matched, o.matchable, "{}", r.scenario);
        assert!(o.unmatchable_by_design >= 4, "{}", r.scenario);
        assert_eq!(o.request_errors, 0, "{}: {:?}", r.scenario, o.first_error);
        // Volunteers did all three things, and an ignored proposal expired and was re-matched.
        assert!(
            o.accepted > 0 && o.declined > 0 && o.ignored > 0,
            "{}: {o:?}",
            r.scenario
        );
        assert!(o.expired > 0, "{}: {o:?}", r.scenario);
        assert!(o.completed > 0, "{}: {o:?}", r.scenario);
        assert!(
            o.proposals > o.matchable,
            "{}: re-matching after declines",
            r.scenario
        );
        assert!(r.surge.end_to_end_p99_ms > 0.0, "{}", r.scenario);
        assert_eq!(r.surge.needs_acknowledged, 400);
        let events = r.registrations.events + r.surge.needs_acknowledged + o.proposals;
        assert!(
            events >= 2_000,
            "{}: a few thousand events ({events})",
            r.scenario
        );

        let files = r.write(reports_dir.path()).expect("write the report");
        assert_eq!(files.len(), 5);
        let json = std::fs::read_to_string(reports_dir.path().join(format!("{}.json", r.scenario)))
            .expect("json");
        let back: Report = serde_json::from_str(&json).expect("the JSON report reads back");
        assert_eq!(back.invariants, r.invariants);
        assert_eq!(back.outcome.matched, r.outcome.matched);
        assert_eq!(back.timeline.len(), r.timeline.len());
        let svg = std::fs::read_to_string(
            reports_dir
                .path()
                .join(format!("{}-latency.svg", r.scenario)),
        )
        .expect("svg");
        assert!(
            svg.starts_with("<svg") && svg.contains("<polyline"),
            "{svg}"
        );
    }
    let status = muster.stop().await.expect("stop");
    assert!(status.success(), "muster up stopped with {status}");
}
