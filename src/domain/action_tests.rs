use super::*;
use proptest::prelude::*;

fn units_of(body: &str) -> Result<Vec<(String, u64)>, String> {
    plan_action(body.as_bytes())
        .map(|p| p.credits.into_iter().map(|c| (c.hash, c.units.get())).collect())
        .map_err(|e| e.to_string())
}

fn one_share(share: &str) -> Result<u64, String> {
    let body = format!("{{\"beneficiaries\":{{\"w\":{share}}}}}");
    units_of(&body).map(|c| c[0].1)
}

#[test]
fn shares_that_floats_get_wrong_are_exact() {
    let table = [
        ("0.29", 29_000_000),
        ("1.15", 115_000_000),
        ("4.35", 435_000_000),
        ("0.57", 57_000_000),
        ("2.3", 230_000_000),
        ("1e-8", 1),
        ("100", 10_000_000_000),
        ("1E2", 10_000_000_000),
        ("\"12.5\"", 1_250_000_000),
        ("\"0.00000001\"", 1),
        ("12.50000000000000000000", 1_250_000_000),
    ];
    for (share, expected) in table {
        assert_eq!(one_share(share), Ok(expected), "share {share}");
    }
}

#[test]
fn bad_shares_are_rejected_with_a_precise_reason() {
    let table = [
        ("100.00000001", "beneficiary \"w\": share 100.00000001 is more than 100"),
        ("0", "beneficiary \"w\": share 0 must be greater than 0"),
        ("-0", "beneficiary \"w\": share -0 must be greater than 0"),
        ("-1", "beneficiary \"w\": share -1 must be greater than 0"),
        (
            "0.000000001",
            "beneficiary \"w\": share 0.000000001 has more than 8 decimal places",
        ),
        ("\"-1.5\"", "beneficiary \"w\": share \"-1.5\" must be greater than 0"),
        ("\"abc\"", "beneficiary \"w\": share \"abc\" is not a decimal number"),
        (
            "\"1e2\"",
            "beneficiary \"w\": share \"1e2\" is not a plain decimal (exponent forms are only allowed in JSON numbers)",
        ),
        ("\" 5\"", "beneficiary \"w\": share \" 5\" is not a decimal number"),
        ("1e400", "beneficiary \"w\": share 1e400 is more than 100"),
        (
            "null",
            "beneficiary \"w\": share null must be a number or a decimal string, not null",
        ),
        (
            "true",
            "beneficiary \"w\": share true must be a number or a decimal string, not a boolean",
        ),
        (
            "{\"x\":1}",
            "beneficiary \"w\": share {\"x\":1} must be a number or a decimal string, not an object",
        ),
        (
            "[1]",
            "beneficiary \"w\": share [1] must be a number or a decimal string, not an array",
        ),
    ];
    for (share, reason) in table {
        assert_eq!(one_share(share), Err(reason.to_string()), "share {share}");
    }
    let long = "9".repeat(500);
    let reason = one_share(&long).expect_err("500 digits");
    assert!(reason.ends_with("is more than 100"), "{reason}");
    assert!(reason.contains("(500 characters)"), "{reason}");
}

#[test]
fn the_example_from_the_readme() {
    assert_eq!(
        units_of(r#"{"beneficiaries":[{"a":0.29},{"b":"1.15"}]}"#),
        Ok(vec![("a".into(), 29_000_000), ("b".into(), 115_000_000)])
    );
}

#[test]
fn all_three_shapes_give_the_same_plan() {
    let object = plan_action(br#"{"beneficiaries":{"b":"2","a":1}}"#).expect("object");
    let single = plan_action(br#"{"beneficiaries":[{"b":"2"},{"a":1}]}"#).expect("single");
    let named = plan_action(br#"{"beneficiaries":[{"hash":"b","share":"2"},{"share":1,"hash":"a"}]}"#).expect("named");
    assert_eq!(object.credits, single.credits);
    assert_eq!(object.credits, named.credits);
    assert_eq!(object.credits[0].hash, "a");
    assert_eq!(object.total.get(), 300_000_000);
    assert_ne!(object.digest, single.digest);
}

#[test]
fn repeated_hashes_across_entries_are_summed() {
    assert_eq!(
        units_of(r#"{"beneficiaries":[{"a":1},{"b":2},{"a":"0.5"}]}"#),
        Ok(vec![("a".into(), 150_000_000), ("b".into(), 200_000_000)])
    );
}

#[test]
fn duplicate_keys_inside_one_object_are_errors() {
    let table = [
        (
            r#"{"beneficiaries":{"a":1,"a":2}}"#,
            "duplicate key \"a\" in \"beneficiaries\"",
        ),
        (
            r#"{"beneficiaries":{"a":1},"beneficiaries":{"b":1}}"#,
            "duplicate key \"beneficiaries\" in the body",
        ),
        (
            r#"{"beneficiaries":[{"hash":"a","hash":"b"}]}"#,
            "duplicate key \"hash\" in beneficiaries[0]",
        ),
        (
            r#"{"reward":1,"reward":2,"beneficiaries":{"a":1}}"#,
            "duplicate key \"reward\" in the body",
        ),
    ];
    for (body, reason) in table {
        assert_eq!(units_of(body), Err(reason.to_string()), "{body}");
    }
}

#[test]
fn bad_bodies_and_hashes_are_rejected() {
    let long_hash = "h".repeat(300);
    let table = [
        ("[]".to_string(), "body is not a JSON object".to_string()),
        ("\"x\"".into(), "body is not a JSON object".into()),
        (
            "{".into(),
            "body is not valid JSON: EOF while parsing an object at line 1 column 1".into(),
        ),
        ("{}".into(), "missing \"beneficiaries\"".into()),
        (r#"{"beneficiaries":[]}"#.into(), "\"beneficiaries\" is empty".into()),
        (r#"{"beneficiaries":{}}"#.into(), "\"beneficiaries\" is empty".into()),
        (
            r#"{"beneficiaries":5}"#.into(),
            "\"beneficiaries\" is a number, not an object or an array".into(),
        ),
        (
            r#"{"beneficiaries":[5]}"#.into(),
            "beneficiaries[0] is a number, not an object".into(),
        ),
        (
            r#"{"beneficiaries":[{"a":1,"b":2}]}"#.into(),
            "beneficiaries[0]: expected {\"<hash>\": share} or {\"hash\": \"<hash>\", \"share\": share}".into(),
        ),
        (
            r#"{"beneficiaries":[{"hash":"a"}]}"#.into(),
            "beneficiaries[0]: expected {\"<hash>\": share} or {\"hash\": \"<hash>\", \"share\": share}".into(),
        ),
        (
            r#"{"beneficiaries":[{"hash":7,"share":1}]}"#.into(),
            "beneficiaries[0]: \"hash\" is a number, not a string".into(),
        ),
        (
            r#"{"beneficiaries":{"":1}}"#.into(),
            "beneficiary \"\": hash is empty".into(),
        ),
        (
            format!(r#"{{"beneficiaries":{{"{long_hash}":1}}}}"#),
            format!(
                "beneficiary \"{}\"… (300 characters): hash makes the key 308 bytes long, more than 250",
                "h".repeat(40)
            ),
        ),
        (
            r#"{"beneficiaries":{"a\u0001b":1}}"#.into(),
            "beneficiary \"a\\u{1}b\": hash contains a control character".into(),
        ),
    ];
    for (body, reason) in table {
        assert_eq!(units_of(&body), Err(reason), "{body}");
    }
    assert!(plan_action(b"\xff\xfe").is_err());
    assert_eq!(
        plan_action(&vec![b' '; ACTION_BYTES_MAX + 1]).map_err(|e| e.to_string()),
        Err(format!(
            "body is {} bytes, more than the 1048576 allowed",
            ACTION_BYTES_MAX + 1
        ))
    );
}

#[test]
fn extra_fields_are_ignored() {
    assert_eq!(
        units_of(r#"{"clickId":"x","beneficiaries":{"a":1},"meta":{"k":[1,2]}}"#),
        Ok(vec![("a".into(), 100_000_000)])
    );
}

#[test]
fn split_mode() {
    let plan = plan_action(br#"{"reward":"10","beneficiaries":{"a":50,"b":"25","c":12.5}}"#).expect("valid");
    assert_eq!(plan.mode, Mode::Split);
    let units: Vec<u64> = plan.credits.iter().map(|c| c.units.get()).collect();
    assert_eq!(units, vec![500_000_000, 250_000_000, 125_000_000]);
    assert_eq!(plan.total.get(), 875_000_000);

    // Repeated hashes are summed before the split.
    let plan = plan_action(br#"{"reward":1,"beneficiaries":[{"a":30},{"a":20},{"b":50}]}"#).expect("valid");
    let units: Vec<u64> = plan.credits.iter().map(|c| c.units.get()).collect();
    assert_eq!(units, vec![50_000_000, 50_000_000]);

    let table = [
        (
            r#"{"reward":1,"beneficiaries":{"a":60,"b":40.00000001}}"#,
            "shares add up to 100.00000001%, more than 100",
        ),
        (
            r#"{"reward":0,"beneficiaries":{"a":1}}"#,
            "reward 0 must be greater than 0",
        ),
        (r#"{"reward":-5,"beneficiaries":{"a":1}}"#, "reward -5 is negative"),
        (
            r#"{"reward":null,"beneficiaries":{"a":1}}"#,
            "reward null must be a number or a decimal string, not null",
        ),
        (
            r#"{"reward":0.000000001,"beneficiaries":{"a":1}}"#,
            "reward 0.000000001 has more than 8 decimal places",
        ),
        (
            r#"{"reward":1e12,"beneficiaries":{"a":1}}"#,
            "reward 1e12 exceeds the total supply of 10000000000000000000 units",
        ),
        (
            r#"{"reward":0.00000001,"beneficiaries":{"a":50}}"#,
            "the split distributes 0 units (reward too small for these shares)",
        ),
    ];
    for (body, reason) in table {
        assert_eq!(units_of(body), Err(reason.to_string()), "{body}");
    }
}

#[test]
fn a_reward_as_large_as_the_supply_splits_exactly() {
    let plan = plan_action(br#"{"reward":"100000000000","beneficiaries":{"a":100}}"#).expect("valid");
    assert_eq!(plan.total, Units::SUPPLY);
}

proptest! {
    #[test]
    fn the_parser_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = plan_action(&bytes);
    }

    #[test]
    fn the_parser_never_panics_on_near_misses(
        shares in proptest::collection::vec("[-+0-9.eE\"a-z{}\\[\\],:]{0,12}", 0..6),
        reward in proptest::option::of("[-0-9.eE\"]{0,10}"),
    ) {
        let list: Vec<String> = shares.iter().enumerate().map(|(i, s)| format!("{{\"h{i}\":{s}}}")).collect();
        let body = match reward {
            Some(r) => format!("{{\"reward\":{r},\"beneficiaries\":[{}]}}", list.join(",")),
            None => format!("{{\"beneficiaries\":[{}]}}", list.join(",")),
        };
        if let Ok(plan) = plan_action(body.as_bytes()) {
            prop_assert!(plan.credits.iter().all(|c| c.units > Units::ZERO));
            prop_assert!(plan.credits.windows(2).all(|w| w[0].hash < w[1].hash));
        }
    }
}

#[test]
fn kinds_name_the_rejection_without_its_particulars() {
    let kind = |body: &str| plan_action(body.as_bytes()).expect_err("rejected").kind();
    assert_eq!(
        kind(r#"{"beneficiaries":{"a":"0.000000001"}}"#),
        kind(r#"{"beneficiaries":{"b":"7.123456789"}}"#)
    );
    assert_eq!(
        kind(r#"{"beneficiaries":{"a":"0.000000001"}}"#),
        "share has more than 8 decimal places"
    );
    assert_eq!(kind(r#"{"beneficiaries":{"bob":-5}}"#), "share must be greater than 0");
    assert_eq!(kind("{"), "not valid JSON");
    let long = |n: usize| format!(r#"{{"beneficiaries":{{"{}":1}}}}"#, "h".repeat(n));
    assert_eq!(kind(&long(300)), kind(&long(400)));
    assert_eq!(kind(&long(300)), "hash makes the key N bytes long, more than N");
}
