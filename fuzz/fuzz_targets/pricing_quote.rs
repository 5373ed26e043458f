//! Request pricing per provider: arbitrary bodies never panic, and every quote that succeeds is
//! internally consistent (a worst case that covers its own token bounds).
#![no_main]

use libfuzzer_sys::fuzz_target;
use spendguard_pricing::providers::{adapter_for, QuoteOptions, Route};
use spendguard_pricing::PriceTable;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    thread_local!(static PRICES: PriceTable = PriceTable::bundled());
    let Some((provider, path, body)) = common::pick(data) else { return };
    let adapter = adapter_for(provider);
    if adapter.route(&http::Method::POST, path) != Route::Priced {
        return;
    }
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", http::HeaderValue::from_static("application/json"));
    PRICES.with(|prices| {
        if let Ok(q) = adapter.quote(&http::Method::POST, path, &headers, body, prices, &QuoteOptions::none()) {
            let bound = q.price.worst_case_cost(q.worst_input_tokens, q.worst_output_tokens, None);
            assert!(q.worst_case >= bound, "worst case below its own bound");
            if let Some(b) = &q.body_rewrite {
                assert!(!b.is_empty(), "a rewrite produced an empty body");
            }
        }
    });
});
