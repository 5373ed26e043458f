//! Payload decoding on payloads in the reference wire format (as the SDKs encode them), and on
//! truncated and malformed ones.

use super::*;
use proptest::prelude::*;

/// A v1 `X-PAYMENT` exactly as Python's `base64.b64encode(json.dumps(payload))` sends it (spaces
/// after separators, padding): base-sepolia, 10000 units ($0.01 USDC) to 0x2096….
const V1_RECORDED: &str = "eyJ4NDAyVmVyc2lvbiI6IDEsICJzY2hlbWUiOiAiZXhhY3QiLCAibmV0d29yayI6ICJiYXNlLXNlcG9saWEiLCAicGF5bG9hZCI6IHsic2lnbmF0dXJlIjogIjB4YWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYiIsICJhdXRob3JpemF0aW9uIjogeyJmcm9tIjogIjB4ODU3YjA2NTE5RTkxZTNBNTQ1Mzg3OTFiRGJiMEUyMjM3M2UzNmI2NiIsICJ0byI6ICIweDIwOTY5M0JjNmFmYzBDNTMyOGJBMzZGYUYwM0M1MTRFRjMxMjI4N0MiLCAidmFsdWUiOiAiMTAwMDAiLCAidmFsaWRBZnRlciI6ICIxNzQwNjcyMDg5IiwgInZhbGlkQmVmb3JlIjogIjE3NDA2NzIxNTQiLCAibm9uY2UiOiAiMHhmM2YzZjNmM2YzZjNmM2YzZjNmM2YzZjNmM2YzZjNmM2YzZjNmM2YzZjNmM2YzZjNmM2YzZjNmM2YzZjNmM2YzIn19fQ==";

const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";
const PAYER: &str = "0x857b06519E91e3A54538791bDbb0E22373e36b66";
const BASE_SEPOLIA_USDC: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";

/// A v2 payment in the layout of the v2 specification (§5.2): `accepted` + EIP-3009 payload.
fn v2_json(amount: &str, value: &str) -> String {
    format!(
        r#"{{"x402Version":2,"resource":{{"url":"https://tools.example/data","description":"d","mimeType":"application/json"}},"accepted":{{"scheme":"exact","network":"eip155:84532","amount":"{amount}","asset":"{BASE_SEPOLIA_USDC}","payTo":"{PAY_TO}","maxTimeoutSeconds":60,"extra":{{"name":"USDC","version":"2"}}}},"payload":{{"signature":"0x2d6a","authorization":{{"from":"{PAYER}","to":"{PAY_TO}","value":"{value}","validAfter":"1740672089","validBefore":"1740672154","nonce":"0xf374"}}}},"extensions":{{}}}}"#
    )
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn recorded_v1_payment_names_network_recipient_and_amount_but_no_asset() {
    let p = decode_payment(HDR_PAYMENT_V1, V1_RECORDED.as_bytes()).expect("v1 decodes");
    assert_eq!(p.version, 1);
    assert_eq!(p.header, HDR_PAYMENT_V1);
    assert_eq!(p.scheme, "exact");
    assert_eq!(p.network, "base-sepolia");
    assert_eq!(p.asset, None, "v1 payloads do not name their asset");
    assert_eq!(p.pay_to, PAY_TO);
    assert_eq!(p.payer.as_deref(), Some(PAYER));
    assert_eq!(p.amount, 10_000);
}

#[test]
fn v2_payment_is_read_from_accepted_and_priced_at_its_largest_amount() {
    let p = decode_payment(HDR_PAYMENT_V2, b64(&v2_json("10000", "10000")).as_bytes())
        .expect("v2 decodes");
    assert_eq!(
        (p.version, p.scheme.as_str(), p.network.as_str()),
        (2, "exact", "eip155:84532")
    );
    assert_eq!(p.asset.as_deref(), Some(BASE_SEPOLIA_USDC));
    assert_eq!(p.pay_to, PAY_TO);
    assert_eq!(p.amount, 10_000);
    // The authorization moves more than `accepted` says: the larger one is the price.
    let p = decode_payment(HDR_PAYMENT_V2, b64(&v2_json("10000", "60000")).as_bytes())
        .expect("v2 decodes");
    assert_eq!(p.amount, 60_000);
    let p = decode_payment(HDR_PAYMENT_V2, b64(&v2_json("70000", "60000")).as_bytes())
        .expect("v2 decodes");
    assert_eq!(p.amount, 70_000);
}

#[test]
fn padding_whitespace_and_url_safe_alphabet_are_accepted() {
    let unpadded = V1_RECORDED.trim_end_matches('=');
    assert_eq!(
        decode_payment(HDR_PAYMENT_V1, unpadded.as_bytes()).map(|p| p.amount),
        Ok(10_000)
    );
    let spaced = format!("  {V1_RECORDED} ");
    assert!(decode_payment(HDR_PAYMENT_V1, spaced.as_bytes()).is_ok());
    let url = base64::engine::general_purpose::URL_SAFE.encode(v2_json("1", "1"));
    assert!(decode_payment(HDR_PAYMENT_V2, url.as_bytes()).is_ok());
}

#[test]
fn headers_pick_the_payment_and_refuse_two() {
    let mut h = http::HeaderMap::new();
    assert!(payment_from_headers(&h).is_none(), "no payment: not x402");
    h.insert(HDR_PAYMENT_V1, http::HeaderValue::from_static(V1_RECORDED));
    assert_eq!(
        payment_from_headers(&h).map(|r| r.map(|p| p.version)),
        Some(Ok(1))
    );
    let v2 = b64(&v2_json("5", "5"));
    h.insert(
        HDR_PAYMENT_V2,
        http::HeaderValue::from_str(&v2).expect("header"),
    );
    assert_eq!(
        payment_from_headers(&h).map(|r| r.map(|p| p.amount)),
        Some(Err(PaymentError::TwoPayments))
    );
    let mut h = http::HeaderMap::new();
    h.append(
        HDR_PAYMENT_V2,
        http::HeaderValue::from_str(&v2).expect("header"),
    );
    h.append(
        HDR_PAYMENT_V2,
        http::HeaderValue::from_str(&v2).expect("header"),
    );
    assert_eq!(
        payment_from_headers(&h).map(|r| r.map(|p| p.amount)),
        Some(Err(PaymentError::TwoPayments))
    );
}

#[test]
fn every_truncation_of_a_recorded_payment_is_an_error_never_a_smaller_price() {
    let v1_json = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(V1_RECORDED)
            .expect("recorded base64"),
    )
    .expect("utf8");
    for json in [v1_json, v2_json("10000", "10000")] {
        // Cut in the JSON (then encoded, as a client that built it short would send it)…
        for cut in 0..json.len() {
            let r = decode_payment(HDR_PAYMENT_V1, b64(&json[..cut]).as_bytes());
            assert!(r.is_err(), "JSON cut at {cut} decoded: {r:?}");
        }
        // …and in the base64 on the wire (padding is optional, so only the data is cut).
        let raw = b64(&json);
        let data = raw.trim_end_matches('=');
        for cut in 0..data.len() {
            let r = decode_payment(HDR_PAYMENT_V1, &data.as_bytes()[..cut]);
            assert!(r.is_err(), "base64 cut at {cut} decoded: {r:?}");
        }
    }
}

#[test]
fn malformed_payments_are_refused_with_the_reason() {
    let cases: Vec<(String, &str)> = vec![
        ("not base64!".into(), "not base64"),
        (b64("not json"), "JSON object"),
        (b64("[1,2]"), "JSON array"),
        (b64(r#"{"x402Version":3}"#), "x402Version 3"),
        (b64(r#"{"x402Version":"1"}"#), "x402Version \"1\""),
        (b64(r#"{"scheme":"exact"}"#), "x402Version"),
        (
            b64(
                r#"{"x402Version":1,"scheme":"exact","network":"base","payload":{"transaction":"AAAA"}}"#,
            ),
            "payload.authorization.value",
        ),
        (
            b64(
                r#"{"x402Version":1,"scheme":"exact","network":"base","payload":{"authorization":{"to":"0x1","value":"-5"}}}"#,
            ),
            "not an amount",
        ),
        (
            b64(
                r#"{"x402Version":1,"scheme":"exact","network":"base","payload":{"authorization":{"to":"0x1","value":"1.5"}}}"#,
            ),
            "not an amount",
        ),
        (
            b64(
                r#"{"x402Version":1,"scheme":"exact","network":"base","payload":{"authorization":{"to":"0x1","value":1e6}}}"#,
            ),
            "not an amount",
        ),
        (
            b64(
                r#"{"x402Version":1,"scheme":"exact","network":"base","payload":{"authorization":{"to":"0x1","value":""}}}"#,
            ),
            "not an amount",
        ),
        (
            b64(&format!(
                r#"{{"x402Version":1,"scheme":"exact","network":"base","payload":{{"authorization":{{"to":"0x1","value":"{}"}}}}}}"#,
                "9".repeat(40)
            )),
            "not an amount",
        ),
        (
            b64(
                r#"{"x402Version":1,"scheme":"exact","network":"base","payload":{"authorization":{"value":"5"}}}"#,
            ),
            "payload.authorization.to",
        ),
        (b64(r#"{"x402Version":2,"payload":{}}"#), "accepted"),
        (
            b64(
                r#"{"x402Version":2,"accepted":{"scheme":"exact","network":"eip155:8453","payTo":"0x1","amount":"5"}}"#,
            ),
            "accepted.asset",
        ),
        (
            b64(
                r#"{"x402Version":2,"accepted":{"scheme":"exact","network":"eip155:8453","asset":"0x2","payTo":"0x1"}}"#,
            ),
            "accepted.amount",
        ),
        (
            b64(
                r#"{"x402Version":2,"accepted":{"scheme":"exact","network":"eip155:8453","asset":"0x2","payTo":"0x1","amount":"5"},"payload":{"authorization":{"value":"x"}}}"#,
            ),
            "payload.authorization.value",
        ),
        ("A".repeat(MAX_HEADER_BYTES + 1), "more than"),
    ];
    for (raw, want) in cases {
        let e = decode_payment(HDR_PAYMENT_V1, raw.as_bytes()).expect_err(want);
        assert!(e.to_string().contains(want), "{raw}: {e} (want {want:?})");
    }
}

#[test]
fn receipts_say_settled_only_with_success_true() {
    let ok =
        b64(r#"{"success":true,"transaction":"0x1234","network":"eip155:84532","payer":"0x857b"}"#);
    let r = decode_receipt(HDR_RESPONSE_V2, ok.as_bytes()).expect("receipt");
    assert!(r.success);
    assert_eq!(r.transaction, "0x1234");
    assert_eq!(r.network, "eip155:84532");
    assert_eq!(r.payer.as_deref(), Some("0x857b"));
    let failed = b64(
        r#"{"success":false,"errorReason":"insufficient_funds","transaction":"","network":"base"}"#,
    );
    let r = decode_receipt(HDR_RESPONSE_V1, failed.as_bytes()).expect("receipt");
    assert!(!r.success);
    assert_eq!(r.error_reason.as_deref(), Some("insufficient_funds"));
    for bad in [
        b64(r#"{"success":"true"}"#),
        b64(r#"{"transaction":"0x1"}"#),
        b64("true"),
        "%%%".to_string(),
    ] {
        assert!(
            decode_receipt(HDR_RESPONSE_V2, bad.as_bytes()).is_err(),
            "{bad}"
        );
    }
    let data = ok.trim_end_matches('=');
    for cut in 0..data.len() {
        assert!(
            decode_receipt(HDR_RESPONSE_V2, &data.as_bytes()[..cut]).is_err(),
            "cut {cut}"
        );
    }
    let mut h = http::HeaderMap::new();
    assert!(receipt_from_headers(&h).is_none());
    h.insert(
        HDR_RESPONSE_V1,
        http::HeaderValue::from_str(&ok).expect("hdr"),
    );
    assert_eq!(
        receipt_from_headers(&h).map(|r| r.map(|r| r.success)),
        Some(Ok(true))
    );
}

#[test]
fn v1_challenge_bodies_name_the_asset() {
    let body = format!(
        r#"{{"x402Version":1,"error":"X-PAYMENT header is required","accepts":[{{"scheme":"exact","network":"base-sepolia","maxAmountRequired":"10000","resource":"https://tools.example/data","description":"","mimeType":"application/json","payTo":"{PAY_TO}","maxTimeoutSeconds":60,"asset":"{BASE_SEPOLIA_USDC}","extra":{{"name":"USDC","version":"2"}}}},{{"scheme":"exact","network":"base"}}]}}"#
    );
    let r = decode_requirements_v1(body.as_bytes());
    assert_eq!(
        r,
        vec![RequirementV1 {
            scheme: "exact".into(),
            network: "base-sepolia".into(),
            pay_to: PAY_TO.into(),
            asset: BASE_SEPOLIA_USDC.into(),
            max_amount_required: Some(10_000),
        }],
        "the incomplete second entry is skipped"
    );
    assert!(decode_requirements_v1(b"{not json").is_empty());
    assert!(decode_requirements_v1(br#"{"accepts":"x"}"#).is_empty());
}

#[test]
fn usdc_is_micro_dollars_exactly_and_other_assets_need_a_rate() {
    let rates = Rates::default();
    assert_eq!(
        rates.price("eip155:84532", BASE_SEPOLIA_USDC, 60_000),
        Ok(MicroUsd(60_000))
    );
    // EVM addresses compare without case.
    assert_eq!(
        rates.price(
            "base",
            &"0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913".to_lowercase(),
            1
        ),
        Ok(MicroUsd(1))
    );
    // USDC's address on another network is not USDC there.
    assert!(matches!(
        rates.price("eip155:137", BASE_SEPOLIA_USDC, 1),
        Err(RateError::NoRate { .. })
    ));
    let weth = "0x4200000000000000000000000000000000000006";
    assert!(matches!(
        rates.price("eip155:8453", weth, 1),
        Err(RateError::NoRate { .. })
    ));
    let rates = Rates::new(vec![AssetRate {
        network: "eip155:8453".into(),
        asset: weth.into(),
        decimals: 18,
        usd_per_token: MicroUsd(2_500_000_000),
    }]);
    // 0.001 WETH at $2,500 = $2.50.
    assert_eq!(
        rates.price("eip155:8453", weth, 1_000_000_000_000_000),
        Ok(MicroUsd(2_500_000))
    );
    // One wei is worth less than a micro-dollar: rounded up, never down to free.
    assert_eq!(rates.price("eip155:8453", weth, 1), Ok(MicroUsd(1)));
    assert_eq!(rates.price("eip155:8453", weth, 0), Ok(MicroUsd(0)));
    assert!(matches!(
        rates.price("eip155:8453", weth, u128::MAX),
        Err(RateError::Overflow { .. })
    ));
    // u64::MAX µUSD is the "unlimited" marker: no payment is priced at it.
    assert!(matches!(
        Rates::default().price("base-sepolia", BASE_SEPOLIA_USDC, u128::from(u64::MAX)),
        Err(RateError::Overflow { .. })
    ));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode_payment(HDR_PAYMENT_V2, &raw);
        let _ = decode_receipt(HDR_RESPONSE_V2, &raw);
        let _ = decode_requirements_v1(&raw);
    }

    #[test]
    fn arbitrary_base64_json_never_panics(v in arb_json()) {
        let raw = b64(&v.to_string());
        let _ = decode_payment(HDR_PAYMENT_V1, raw.as_bytes());
        let _ = decode_receipt(HDR_RESPONSE_V1, raw.as_bytes());
    }

    #[test]
    fn encoded_v2_payments_decode_to_what_was_signed(
        amount in any::<u64>(), value in any::<u64>(), pay_to in "[0-9a-zA-Z]{1,42}",
    ) {
        let json = v2_json(&amount.to_string(), &value.to_string()).replace(PAY_TO, &pay_to);
        let p = decode_payment(HDR_PAYMENT_V2, b64(&json).as_bytes()).expect("decodes");
        prop_assert_eq!(p.amount, u128::from(amount.max(value)));
        prop_assert_eq!(p.pay_to, pay_to);
    }
}

/// Small JSON values shaped like x402 payloads, with the known keys most of the time.
fn arb_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("x402Version".to_string()),
        Just("accepted".to_string()),
        Just("payload".to_string()),
        Just("authorization".to_string()),
        Just("value".to_string()),
        Just("amount".to_string()),
        Just("success".to_string()),
        "[a-z]{1,6}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (1u8..=3).prop_map(Value::from),
        "[0-9]{0,45}".prop_map(Value::String),
        ".{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
