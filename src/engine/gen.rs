//! Deterministic test data: bank-export-like CSV rows with a known sum.

use std::io::{self, Write};

use rust_decimal::Decimal;

/// The header the generator writes.
pub const HEADER: &str = "id,booking_date,counterparty,description,amount EUR,reference";

/// What was written.
#[derive(Debug, Clone, PartialEq)]
pub struct GenResult {
    pub entries: u64,
    /// Exact sum of the amounts written (scale 2).
    pub sum: Decimal,
    pub bytes: u64,
}

/// SplitMix64: tiny, fast, and its output never changes between releases,
/// so a seed always produces the same file.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const COUNTERPARTIES: &[&str] = &[
    "Acme Industries GmbH",
    "Bäckerei Schulz",
    "Stadtwerke München",
    "Amazon EU S.a.r.l.",
    "Deutsche Bahn AG",
    "REWE Markt GmbH",
    "Finanzamt Mitte",
    "Spotify AB",
    "Hausverwaltung Krause",
    "Café Central",
];
const QUOTED_COUNTERPARTIES: &[&str] = &[
    "\"Müller, Hans\"",
    "\"Smith, Jones & Co\"",
    "\"Meier, Anna\"",
];
const DESCRIPTIONS: &[&str] = &[
    "Monthly rent apartment 3B",
    "Groceries weekly shopping",
    "Train ticket Berlin-Hamburg",
    "Streaming subscription",
    "Invoice 2024-117 consulting",
    "Electricity bill Q3",
    "Coffee beans and filters",
    "Refund order 88231",
    "Card payment POS 4711",
    "SEPA transfer savings",
];
const QUOTED_DESCRIPTIONS: &[&str] = &[
    "\"Order \"\"Premium\"\", 12 months\"",
    "\"Split payment\nsecond line of the note\"",
    "\"Fees, taxes and \"\"extras\"\"\"",
];

/// Writes a header and `rows` records (about 90 bytes each) to `w` and
/// returns their count, exact sum and size. Same seed, same bytes.
pub fn generate<W: Write>(w: W, rows: u64, seed: u64) -> io::Result<GenResult> {
    let mut out = io::BufWriter::with_capacity(1 << 20, w);
    let mut rng = Rng(seed);
    let mut cents: i128 = 0;
    let mut bytes = 0u64;
    let mut line = Vec::with_capacity(256);
    writeln!(line, "{HEADER}")?;
    for id in 1..=rows {
        let counterparty = if rng.below(10) == 0 {
            rng.pick(QUOTED_COUNTERPARTIES)
        } else {
            rng.pick(COUNTERPARTIES)
        };
        let description = if rng.below(50) == 0 {
            rng.pick(QUOTED_DESCRIPTIONS)
        } else {
            rng.pick(DESCRIPTIONS)
        };
        // Mostly small amounts, a few large ones, about a third negative.
        let magnitude = if rng.below(20) == 0 {
            rng.below(10_000_000)
        } else {
            rng.below(100_000)
        } as i128;
        let amount = if rng.below(3) == 0 {
            -magnitude
        } else {
            magnitude
        };
        cents += amount;
        let sign = if amount < 0 { "-" } else { "" };
        let abs = amount.unsigned_abs();
        writeln!(
            line,
            "{id},2024-{:02}-{:02},{counterparty},{description},{sign}{}.{:02},RF{:016X}",
            1 + rng.below(12),
            1 + rng.below(28),
            abs / 100,
            abs % 100,
            rng.next()
        )?;
        out.write_all(&line)?;
        bytes += line.len() as u64;
        line.clear();
    }
    out.write_all(&line)?;
    bytes += line.len() as u64;
    out.flush()?;
    let sum = Decimal::try_from_i128_with_scale(cents, 2).map_err(io::Error::other)?;
    Ok(GenResult {
        entries: rows,
        sum,
        bytes,
    })
}
