//! The money type's parse and format contract.

use spendguard_pricing::money::{MicroUsd, MoneyParseError};

#[test]
fn parses_dollar_strings_exactly() {
    for (s, micro) in [
        ("5", 5_000_000),
        ("5.00", 5_000_000),
        ("$5.5", 5_500_000),
        ("0.000015", 15),
        (".25", 250_000),
        ("7.", 7_000_000),
        (" 12.345678 ", 12_345_678),
    ] {
        assert_eq!(s.parse::<MicroUsd>(), Ok(MicroUsd(micro)), "{s}");
    }
}

#[test]
fn refuses_what_is_not_a_dollar_amount() {
    for s in [
        "",
        ".",
        "-1",
        "1e3",
        "NaN",
        "1.0000001",
        "1,5",
        "$",
        "5 USD",
        "0x10",
    ] {
        assert!(
            matches!(s.parse::<MicroUsd>(), Err(MoneyParseError::Malformed(_))),
            "{s}"
        );
    }
    assert!(matches!(
        "99999999999999999999".parse::<MicroUsd>(),
        Err(MoneyParseError::Overflow(_))
    ));
    assert!(matches!(
        "18446744073710".parse::<MicroUsd>(),
        Err(MoneyParseError::Overflow(_))
    ));
}

#[test]
fn formats_with_two_to_six_decimals() {
    assert_eq!(MicroUsd(4_970_000).to_string(), "$4.97");
    assert_eq!(MicroUsd(15).to_string(), "$0.000015");
    assert_eq!(MicroUsd(0).to_string(), "$0.00");
    assert_eq!(MicroUsd::from_usd(5).to_string(), "$5.00");
    assert_eq!(MicroUsd(1_234_500).to_string(), "$1.2345");
}

#[test]
fn round_trips_and_saturates() {
    for m in [0, 1, 10, 999_999, 1_000_000, 123_456_789, u64::MAX] {
        let s = MicroUsd(m).to_string();
        assert_eq!(s.parse::<MicroUsd>(), Ok(MicroUsd(m)), "{s}");
    }
    assert_eq!(MicroUsd::MAX.saturating_add(MicroUsd(1)), MicroUsd::MAX);
    assert_eq!(MicroUsd(1).saturating_sub(MicroUsd(2)), MicroUsd::ZERO);
    assert_eq!(MicroUsd::MAX.checked_add(MicroUsd(1)), None);
}
