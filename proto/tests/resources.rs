//! resources: text form, arithmetic invariants (proptest) and the table of bad inputs.

use corral_proto::resources::{scalar_from_f64, RangeSet, ResourceError, Resources, Value, MAX_SCALAR_MILLI};
use proptest::prelude::*;

#[test]
fn parses_the_design_example() {
    let r = Resources::parse("cpus:4;mem:8192;disk:20000;ports:[31000-32000]").unwrap();
    assert_eq!(r.scalar_milli("cpus"), 4000);
    assert_eq!(r.scalar_milli("mem"), 8_192_000);
    assert_eq!(r.ranges("ports").ranges(), &[(31000, 32000)]);
    assert_eq!(r.to_string(), "cpus:4;disk:20000;mem:8192;ports:[31000-32000]");
    let frac = Resources::parse(" cpus : 0.5 ; gpus:1.250 ").unwrap();
    assert_eq!(frac.scalar_milli("cpus"), 500);
    assert_eq!(frac.to_string(), "cpus:0.5;gpus:1.25");
}

#[test]
fn bad_resource_strings_are_rejected_naming_the_problem() {
    // (input, a fragment the message must contain)
    let table: &[(&str, &str)] = &[
        ("cpus", "not of the form name:value"),
        ("cpus:4;;mem:1", "entry 2 is empty"),
        ("cpus:4;", "entry 2 is empty"),
        ("CPUS:4", "invalid resource name \"CPUS\""),
        ("1cpu:4", "invalid resource name"),
        (":4", "invalid resource name \"\""),
        ("cpus:4;cpus:2", "duplicate resource \"cpus\""),
        ("cpus:-1", "negative value -1"),
        ("mem:-0.5", "negative value"),
        ("cpus:NaN", "\"NaN\" is not a number"),
        ("cpus:inf", "is not a number"),
        ("cpus:1e3", "is not a number"),
        ("cpus:", "is not a number"),
        ("cpus:1.", "is not a number"),
        ("cpus:.5", "is not a number"),
        ("cpus:0x10", "is not a number"),
        ("cpus:0.0001", "more than 3 decimal places"),
        ("mem:99999999999999999999999", "too large"),
        ("mem:1000000000001", "too large"),
        ("ports:31000-32000", "is not a number"),
        ("ports:[31000-32000", "malformed range set"),
        ("ports:[a-b]", "malformed range set"),
        ("ports:[5-1]", "range 5-1 has begin after end"),
        ("ports:[1-10,5-20]", "ranges overlap at 5"),
        ("ports:[1-10,-5]", "malformed range set"),
    ];
    for (input, fragment) in table {
        match Resources::parse(input) {
            Ok(r) => panic!("{input:?} was accepted as {r}"),
            Err(e) => assert!(
                e.to_string().contains(fragment),
                "{input:?}: message {:?} lacks {fragment:?}",
                e.to_string()
            ),
        }
    }
}

#[test]
fn wire_scalars_are_validated() {
    assert_eq!(scalar_from_f64("cpus", 0.5).unwrap(), 500);
    assert_eq!(scalar_from_f64("cpus", 0.0005).unwrap(), 1, "rounds to 0.001");
    assert!(matches!(
        scalar_from_f64("cpus", f64::NAN),
        Err(ResourceError::NotANumber { .. })
    ));
    assert!(matches!(
        scalar_from_f64("cpus", f64::INFINITY),
        Err(ResourceError::NotANumber { .. })
    ));
    assert!(matches!(
        scalar_from_f64("cpus", -1.0),
        Err(ResourceError::Negative { .. })
    ));
    assert!(matches!(
        scalar_from_f64("mem", 1e300),
        Err(ResourceError::TooLarge { .. })
    ));
}

#[test]
fn arithmetic_is_checked() {
    let a = Resources::parse("cpus:1;ports:[10-20]").unwrap();
    let b = Resources::parse("cpus:2").unwrap();
    assert!(matches!(a.checked_sub(&b), Err(ResourceError::Insufficient { .. })));
    let ranges = Resources::parse("cpus:[1-2]").unwrap();
    assert!(matches!(
        a.checked_add(&ranges),
        Err(ResourceError::KindMismatch { .. })
    ));
    let big = Resources::scalar("mem", MAX_SCALAR_MILLI).unwrap();
    let mut sum = big.clone();
    let overflow = (0..20_000).try_for_each(|_| {
        sum = sum.checked_add(&big)?;
        Ok::<_, ResourceError>(())
    });
    assert!(matches!(overflow, Err(ResourceError::Overflow { .. })));
    assert!(Resources::new()
        .insert_new("cpus", Value::Scalar(MAX_SCALAR_MILLI + 1))
        .is_err());
}

#[test]
fn dominant_share_follows_the_drf_paper() {
    // Ghodsi et al.: <9 CPU, 18 GB>; A holds 3 x <1 CPU, 4 GB>, B 2 x <3 CPU, 1 GB>.
    let total = Resources::parse("cpus:9;mem:18432").unwrap();
    let a = Resources::parse("cpus:3;mem:12288").unwrap();
    let b = Resources::parse("cpus:6;mem:2048").unwrap();
    assert!((a.dominant_share(&total) - 2.0 / 3.0).abs() < 1e-12);
    assert!((b.dominant_share(&total) - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(Resources::new().dominant_share(&total), 0.0);
}

fn arb_ranges() -> impl Strategy<Value = RangeSet> {
    prop::collection::vec((0u64..70_000, 0u64..200), 0..6).prop_map(|v| {
        let ranges: Vec<(u64, u64)> = v.into_iter().map(|(b, len)| (b, b + len)).collect();
        RangeSet::from_ranges("ports", &ranges, false).unwrap()
    })
}

fn arb_resources() -> impl Strategy<Value = Resources> {
    let max = MAX_SCALAR_MILLI / 1_000_000;
    (
        prop::option::of(0..max),
        prop::option::of(0..max),
        prop::option::of(0..max),
        arb_ranges(),
    )
        .prop_map(|(cpus, mem, gpus, ports)| {
            let mut r = Resources::new();
            for (name, v) in [("cpus", cpus), ("mem", mem), ("gpus", gpus)] {
                if let Some(v) = v {
                    r.insert_new(name, Value::Scalar(v)).unwrap();
                }
            }
            r.insert_new("ports", Value::Ranges(ports)).unwrap();
            r
        })
}

proptest! {
    #[test]
    fn text_round_trip(r in arb_resources()) {
        let text = r.to_string();
        prop_assert_eq!(Resources::parse(&text).unwrap(), r, "text {}", text);
    }

    #[test]
    fn add_then_sub_is_identity(a in arb_resources(), b in arb_resources()) {
        let sum = a.checked_add(&b).unwrap();
        prop_assert!(sum.contains(&a) && sum.contains(&b));
        // Subtraction gives back `a` exactly when b's ranges did not overlap a's.
        let rest = sum.checked_sub(&b).unwrap();
        prop_assert!(a.contains(&rest));
        if a.ranges("ports").difference(&b.ranges("ports")) == a.ranges("ports") {
            prop_assert_eq!(rest, a);
        }
    }

    #[test]
    fn add_is_commutative_and_associative(a in arb_resources(), b in arb_resources(), c in arb_resources()) {
        prop_assert_eq!(a.checked_add(&b).unwrap(), b.checked_add(&a).unwrap());
        let left = a.checked_add(&b).unwrap().checked_add(&c).unwrap();
        let right = a.checked_add(&b.checked_add(&c).unwrap()).unwrap();
        prop_assert_eq!(left, right);
    }

    #[test]
    fn contains_matches_sub(a in arb_resources(), b in arb_resources()) {
        prop_assert_eq!(a.contains(&b), a.checked_sub(&b).is_ok());
    }

    #[test]
    fn range_difference_and_union(a in arb_ranges(), b in arb_ranges()) {
        let diff = a.difference(&b);
        prop_assert!(a.contains(&diff));
        prop_assert_eq!(diff.union(&b), a.union(&b));
        prop_assert!(diff.ranges().iter().all(|&(x, y)| !b.contains(&RangeSet::from_ranges("p", &[(x, x), (y, y)], false).unwrap())));
        // a splits into a∖b and a∩b, disjoint: their sizes add up to a's.
        let common = a.difference(&diff);
        prop_assert!(b.contains(&common));
        prop_assert_eq!(diff.len() + common.len(), a.len());
    }

    #[test]
    fn dominant_share_is_max_share(a in arb_resources(), total in arb_resources()) {
        let d = a.dominant_share(&total);
        for name in ["cpus", "mem", "gpus"] {
            prop_assert!(a.share_of(&total, name) <= d);
        }
    }
}
