//! x402 payments (HTTP 402 + a signed stablecoin payment per call): reading what a payment pays, in
//! which asset, to whom, and whether the server's receipt says it was settled.
//!
//! Wire formats (coinbase/x402 specifications v1 and v2):
//! * v1: the payment is `X-PAYMENT`, base64 JSON
//!   `{"x402Version":1,"scheme","network","payload":{"signature","authorization":{"from","to",
//!   "value","validAfter","validBefore","nonce"}}}` (EIP-3009 `transferWithAuthorization`). It does
//!   **not** name its asset: that is in the 402 challenge's JSON body, `accepts[]` of {scheme,
//!   network, maxAmountRequired, resource, payTo, asset, maxTimeoutSeconds, extra}
//!   ([`decode_requirements_v1`]).
//! * v2: the payment is `PAYMENT-SIGNATURE`, base64 JSON `{"x402Version":2,"accepted":{scheme,
//!   network (CAIP-2), amount, asset, payTo, maxTimeoutSeconds, extra},"payload":{…},"resource"?,
//!   "extensions"?}`; the 402 challenge is the base64 `PAYMENT-REQUIRED` header.
//! * The receipt (both versions) is `X-PAYMENT-RESPONSE` / `PAYMENT-RESPONSE`, base64 JSON
//!   `{"success","transaction","network","payer"?,"errorReason"?}`.
//!
//! Amounts are strings of the asset's smallest unit ("10000" USDC = $0.01: USDC has 6 decimals,
//! one unit is one micro-dollar). A payment is priced at the **largest** amount it names
//! (`accepted.amount` and `payload.authorization.value` when both are there): the worst case, as
//! for every other request. Nothing here changes a header: the payment goes out as the client
//! signed it.

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use serde_json::Value;

use crate::MicroUsd;

/// The v1 payment header.
pub const HDR_PAYMENT_V1: &str = "x-payment";
/// The v2 payment header.
pub const HDR_PAYMENT_V2: &str = "payment-signature";
/// The v1 settlement receipt header.
pub const HDR_RESPONSE_V1: &str = "x-payment-response";
/// The v2 settlement receipt header.
pub const HDR_RESPONSE_V2: &str = "payment-response";
/// The v2 challenge header. SpendGuard's own 402 never carries it (an x402-aware agent would try
/// to pay SpendGuard).
pub const HDR_REQUIRED_V2: &str = "payment-required";

/// A payment or receipt header longer than this is refused: real ones are well under 2 KiB
/// (a signature, an authorization and a requirement), and nothing unbounded is decoded.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// A 402 challenge body larger than this is not read for requirements.
pub const MAX_CHALLENGE_BODY: usize = 64 * 1024;

/// What an x402 payment pays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payment {
    /// `x402Version` of the payload (1 or 2).
    pub version: u8,
    /// The header it came in (`x-payment` or `payment-signature`).
    pub header: &'static str,
    /// e.g. `exact`.
    pub scheme: String,
    /// As the payment names it: `base`, `base-sepolia` (v1) or CAIP-2 `eip155:8453` (v2).
    pub network: String,
    /// The token contract (or mint); `None` for v1, whose payload does not name it.
    pub asset: Option<String>,
    /// Recipient (`accepted.payTo`, or the authorization's `to`).
    pub pay_to: String,
    /// The payer's address when the payload names it (`authorization.from`).
    pub payer: Option<String>,
    /// The largest amount the payment names, in the asset's smallest unit.
    pub amount: u128,
}

/// Why a payment or receipt header could not be read. Every one of these refuses the request:
/// a payment that cannot be read cannot be priced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    #[error("both X-PAYMENT and PAYMENT-SIGNATURE are set: send one payment per request")]
    TwoPayments,
    #[error("{header} is {len} bytes, more than the {MAX_HEADER_BYTES} a payment may have")]
    TooLarge { header: &'static str, len: usize },
    #[error("{header} is not base64 ({detail}); x402 headers are base64-encoded JSON")]
    NotBase64 {
        header: &'static str,
        detail: String,
    },
    #[error("{header} does not decode to a JSON object ({detail})")]
    NotJson {
        header: &'static str,
        detail: String,
    },
    #[error("{header} has x402Version {version}; SpendGuard reads versions 1 and 2")]
    Version {
        header: &'static str,
        version: String,
    },
    #[error("{header} has no {field}")]
    Missing {
        header: &'static str,
        field: &'static str,
    },
    #[error("{header}: {field} is {value}, not an amount in the asset's smallest unit (a string of digits)")]
    BadAmount {
        header: &'static str,
        field: &'static str,
        value: String,
    },
}

/// Standard base64, padding optional: what the reference SDKs send (btoa, `b64encode`), and what
/// a client that strips padding sends. URL-safe base64 is tried second.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const LENIENT_URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The JSON object in a base64 x402 header.
fn decode_json(
    header: &'static str,
    raw: &[u8],
) -> Result<serde_json::Map<String, Value>, PaymentError> {
    if raw.len() > MAX_HEADER_BYTES {
        return Err(PaymentError::TooLarge {
            header,
            len: raw.len(),
        });
    }
    let trimmed = raw.trim_ascii();
    let bytes = match LENIENT.decode(trimmed) {
        Ok(b) => b,
        Err(e) => LENIENT_URL
            .decode(trimmed)
            .map_err(|_| PaymentError::NotBase64 {
                header,
                detail: e.to_string(),
            })?,
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(PaymentError::NotJson {
            header,
            detail: format!("a JSON {}", kind(&other)),
        }),
        Err(e) => Err(PaymentError::NotJson {
            header,
            detail: e.to_string(),
        }),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// An amount: a string of decimal digits (the spec), or a non-negative JSON integer (lenient).
fn amount(header: &'static str, field: &'static str, v: &Value) -> Result<u128, PaymentError> {
    let bad = || PaymentError::BadAmount {
        header,
        field,
        value: truncated(&v.to_string()),
    };
    match v {
        Value::String(s)
            if !s.is_empty() && s.len() <= 39 && s.bytes().all(|b| b.is_ascii_digit()) =>
        {
            s.parse().map_err(|_| bad())
        }
        Value::Number(n) => n.as_u64().map(u128::from).ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// At most 80 characters of a value, for error messages (never a whole header).
fn truncated(s: &str) -> String {
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn text(
    header: &'static str,
    field: &'static str,
    v: Option<&Value>,
) -> Result<String, PaymentError> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(PaymentError::Missing { header, field }),
    }
}

fn opt_text(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The payment a request carries: `None` when it carries none.
pub fn payment_from_headers(headers: &http::HeaderMap) -> Option<Result<Payment, PaymentError>> {
    let v1 = headers.get(HDR_PAYMENT_V1);
    let v2 = headers.get(HDR_PAYMENT_V2);
    // A second header of the same name would be a second payment too.
    let count = headers.get_all(HDR_PAYMENT_V1).iter().count()
        + headers.get_all(HDR_PAYMENT_V2).iter().count();
    match (v1, v2) {
        (None, None) => None,
        _ if count > 1 => Some(Err(PaymentError::TwoPayments)),
        (Some(v), None) => Some(decode_payment(HDR_PAYMENT_V1, v.as_bytes())),
        (None, Some(v)) => Some(decode_payment(HDR_PAYMENT_V2, v.as_bytes())),
        (Some(_), Some(_)) => Some(Err(PaymentError::TwoPayments)),
    }
}

/// Decodes one payment header value. The layout follows the payload's own `x402Version`, not the
/// header's name (a v2 payload in `X-PAYMENT` is still read as v2).
pub fn decode_payment(header: &'static str, raw: &[u8]) -> Result<Payment, PaymentError> {
    let m = decode_json(header, raw)?;
    let version = match m.get("x402Version") {
        Some(Value::Number(n)) if n.as_u64() == Some(1) => 1,
        Some(Value::Number(n)) if n.as_u64() == Some(2) => 2,
        Some(v) => {
            return Err(PaymentError::Version {
                header,
                version: truncated(&v.to_string()),
            })
        }
        None => {
            return Err(PaymentError::Missing {
                header,
                field: "x402Version",
            })
        }
    };
    let payload = m.get("payload").and_then(Value::as_object);
    let authorization = payload
        .and_then(|p| p.get("authorization"))
        .and_then(Value::as_object);
    let auth_value = authorization
        .and_then(|a| a.get("value"))
        .map(|v| amount(header, "payload.authorization.value", v))
        .transpose()?;
    let payer = opt_text(authorization.and_then(|a| a.get("from")));
    if version == 1 {
        let scheme = text(header, "scheme", m.get("scheme"))?;
        let network = text(header, "network", m.get("network"))?;
        let Some(amount) = auth_value else {
            return Err(PaymentError::Missing {
                header,
                field: "payload.authorization.value",
            });
        };
        let pay_to = text(
            header,
            "payload.authorization.to",
            authorization.and_then(|a| a.get("to")),
        )?;
        return Ok(Payment {
            version,
            header,
            scheme,
            network,
            asset: None,
            pay_to,
            payer,
            amount,
        });
    }
    let Some(accepted) = m.get("accepted").and_then(Value::as_object) else {
        return Err(PaymentError::Missing {
            header,
            field: "accepted",
        });
    };
    let scheme = text(header, "accepted.scheme", accepted.get("scheme"))?;
    let network = text(header, "accepted.network", accepted.get("network"))?;
    let asset = text(header, "accepted.asset", accepted.get("asset"))?;
    let pay_to = text(header, "accepted.payTo", accepted.get("payTo"))?;
    let Some(accepted_amount) = accepted.get("amount") else {
        return Err(PaymentError::Missing {
            header,
            field: "accepted.amount",
        });
    };
    let accepted_amount = amount(header, "accepted.amount", accepted_amount)?;
    Ok(Payment {
        version,
        header,
        scheme,
        network,
        asset: Some(asset),
        pay_to,
        payer,
        amount: accepted_amount.max(auth_value.unwrap_or(0)),
    })
}

/// A settlement receipt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub success: bool,
    /// The transaction hash (empty when settlement failed).
    pub transaction: String,
    pub network: String,
    pub payer: Option<String>,
    pub error_reason: Option<String>,
}

/// The receipt a response carries: `None` when it carries none.
pub fn receipt_from_headers(headers: &http::HeaderMap) -> Option<Result<Receipt, PaymentError>> {
    let (header, v) = match (headers.get(HDR_RESPONSE_V2), headers.get(HDR_RESPONSE_V1)) {
        (Some(v), _) => (HDR_RESPONSE_V2, v),
        (None, Some(v)) => (HDR_RESPONSE_V1, v),
        (None, None) => return None,
    };
    Some(decode_receipt(header, v.as_bytes()))
}

/// Decodes one receipt header value. Only `success: true` (a JSON boolean) counts as settled.
pub fn decode_receipt(header: &'static str, raw: &[u8]) -> Result<Receipt, PaymentError> {
    let m = decode_json(header, raw)?;
    let success = match m.get("success") {
        Some(Value::Bool(b)) => *b,
        _ => {
            return Err(PaymentError::Missing {
                header,
                field: "success",
            })
        }
    };
    Ok(Receipt {
        success,
        transaction: opt_text(m.get("transaction")).unwrap_or_default(),
        network: opt_text(m.get("network")).unwrap_or_default(),
        payer: opt_text(m.get("payer")),
        error_reason: opt_text(m.get("errorReason")),
    })
}

/// One entry of a v1 402 challenge's `accepts[]`: what a v1 payment to `pay_to` on `network` pays in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequirementV1 {
    pub scheme: String,
    pub network: String,
    pub pay_to: String,
    pub asset: String,
    pub max_amount_required: Option<u128>,
}

/// The requirements of a v1 402 challenge body (`{"x402Version":1,"accepts":[…]}`); entries
/// without a network, payTo or asset are skipped. Not JSON, or no `accepts`: empty.
pub fn decode_requirements_v1(body: &[u8]) -> Vec<RequirementV1> {
    if body.len() > MAX_CHALLENGE_BODY {
        return Vec::new();
    }
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    let Some(accepts) = m.get("accepts").and_then(Value::as_array) else {
        return Vec::new();
    };
    accepts
        .iter()
        .filter_map(Value::as_object)
        .filter_map(|a| {
            Some(RequirementV1 {
                scheme: opt_text(a.get("scheme")).unwrap_or_default(),
                network: opt_text(a.get("network"))?,
                pay_to: opt_text(a.get("payTo"))?,
                asset: opt_text(a.get("asset"))?,
                max_amount_required: a
                    .get("maxAmountRequired")
                    .and_then(|v| amount("402 body", "maxAmountRequired", v).ok()),
            })
        })
        .collect()
}

/// What a whole token of an asset is worth, to price payments in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssetRate {
    /// The network as payments name it (`eip155:8453`, or v1's `base`).
    pub network: String,
    /// The token contract or mint.
    pub asset: String,
    /// Decimals of the token: one whole token is `10^decimals` smallest units.
    pub decimals: u8,
    /// Micro-dollars per whole token (USDC: 1,000,000).
    pub usd_per_token: MicroUsd,
}

/// Circle's USDC on the networks x402 settles on most, 6 decimals, at $1: one unit is one
/// micro-dollar. Other assets and networks need a configured rate.
pub const BUILTIN_USDC: &[(&str, &str)] = &[
    ("eip155:8453", "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"),
    ("base", "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"),
    ("eip155:84532", "0x036CbD53842c5426634e7929541eC2318f3dCF7e"),
    ("base-sepolia", "0x036CbD53842c5426634e7929541eC2318f3dCF7e"),
    ("eip155:1", "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"),
    ("eip155:42161", "0xaf88d065e77c8cC2239327C5EDb3A432268e5831"),
    ("eip155:10", "0x0b2C639c533813f4Aa9D7837CAf62653d097Ff85"),
];

/// EVM addresses (0x…) compare without case (their case is only a checksum); anything else
/// (Solana mints are base58) compares exactly.
pub fn same_address(a: &str, b: &str) -> bool {
    if a.starts_with("0x") || a.starts_with("0X") {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}

/// Why a payment has no price.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("no USD rate for asset {asset} on network {network}: add it to x402_assets in the agent config (decimals and usd_per_token)")]
    NoRate { network: String, asset: String },
    #[error("a payment of {amount} units of {asset} is more than any budget can hold")]
    Overflow { asset: String, amount: u128 },
}

/// Rates for the assets x402 payments are priced in: the configured ones, then [`BUILTIN_USDC`].
#[derive(Clone, Debug, Default)]
pub struct Rates {
    configured: Vec<AssetRate>,
}

impl Rates {
    pub fn new(configured: Vec<AssetRate>) -> Rates {
        Rates { configured }
    }

    /// The rate of `asset` on `network` (a configured rate wins over the built-in USDC one).
    pub fn rate(&self, network: &str, asset: &str) -> Option<AssetRate> {
        let net = |n: &str| n.eq_ignore_ascii_case(network);
        if let Some(r) = self
            .configured
            .iter()
            .find(|r| net(&r.network) && same_address(&r.asset, asset))
        {
            return Some(r.clone());
        }
        BUILTIN_USDC
            .iter()
            .find(|(n, a)| net(n) && same_address(a, asset))
            .map(|(n, a)| AssetRate {
                network: n.to_string(),
                asset: a.to_string(),
                decimals: 6,
                usd_per_token: MicroUsd(1_000_000),
            })
    }

    /// The payment's price in micro-dollars, rounded up (a payment is never priced below what it
    /// moves).
    pub fn price(&self, network: &str, asset: &str, amount: u128) -> Result<MicroUsd, RateError> {
        let r = self.rate(network, asset).ok_or_else(|| RateError::NoRate {
            network: network.to_string(),
            asset: asset.to_string(),
        })?;
        let overflow = || RateError::Overflow {
            asset: asset.to_string(),
            amount,
        };
        let scale = 10u128
            .checked_pow(u32::from(r.decimals))
            .ok_or_else(overflow)?;
        let micro = amount
            .checked_mul(u128::from(r.usd_per_token.0))
            .ok_or_else(overflow)?
            .div_ceil(scale);
        u64::try_from(micro)
            .ok()
            // MicroUsd::MAX means "unlimited" in headers; no payment is priced at it.
            .filter(|m| *m < u64::MAX)
            .map(MicroUsd)
            .ok_or_else(overflow)
    }
}

#[cfg(test)]
#[path = "x402/tests.rs"]
mod tests;
