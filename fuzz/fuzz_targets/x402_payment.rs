//! x402 decoding (spendguard_pricing::x402): payment, receipt and v1 challenge bytes never panic,
//! whether raw or base64 of anything; a payment that decodes always names what it is priced by
//! (version 1 or 2, a network, a recipient, an asset for v2), and pricing it never panics.
#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use spendguard_pricing::x402::{
    decode_payment, decode_receipt, decode_requirements_v1, AssetRate, Payment, Rates,
    HDR_PAYMENT_V1, HDR_PAYMENT_V2, HDR_RESPONSE_V2,
};
use spendguard_pricing::MicroUsd;

fn check(p: &Payment) {
    assert!(p.version == 1 || p.version == 2, "{p:?}");
    assert!(!p.network.is_empty() && !p.pay_to.is_empty() && !p.scheme.is_empty(), "{p:?}");
    assert_eq!(p.asset.is_some(), p.version == 2, "v2 names its asset, v1 never: {p:?}");
    let rates = Rates::new(vec![AssetRate {
        network: p.network.clone(),
        asset: "0xfuzz".into(),
        decimals: (p.amount % 39) as u8,
        usd_per_token: MicroUsd(p.amount as u64),
    }]);
    let asset = p.asset.as_deref().unwrap_or("0xfuzz");
    if let Ok(m) = rates.price(&p.network, asset, p.amount) {
        assert!(m < MicroUsd::MAX, "a price is never the unlimited marker");
    }
    let _ = Rates::default().price(&p.network, asset, p.amount);
}

fuzz_target!(|data: &[u8]| {
    for header in [HDR_PAYMENT_V1, HDR_PAYMENT_V2] {
        if let Ok(p) = decode_payment(header, data) {
            check(&p);
        }
    }
    let _ = decode_receipt(HDR_RESPONSE_V2, data);
    let _ = decode_requirements_v1(data);
    // Base64 of the input reaches the JSON layer every time.
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    if let Ok(p) = decode_payment(HDR_PAYMENT_V2, encoded.as_bytes()) {
        check(&p);
    }
    let _ = decode_receipt(HDR_RESPONSE_V2, encoded.as_bytes());
});
