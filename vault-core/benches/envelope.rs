//! Seal and open of a 20-field student record spanning 6 categories: 20 field seals plus 6 DEK
//! wraps (26 AES-256-GCM operations) to seal; 6 unwraps plus 20 opens to read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ring::rand::SystemRandom;
use vault_core::{Category, FieldName, Keyring, RecordId, RecordKeys};

const CATEGORIES: [&str; 6] = [
    "identity",
    "contact",
    "academic",
    "attendance",
    "health",
    "psychological",
];

fn record() -> Vec<(FieldName, Category, Vec<u8>)> {
    (0..20)
        .map(|i| {
            let field = FieldName::parse(&format!("field_{i:02}")).unwrap();
            let cat = Category::parse(CATEGORIES[i % 6]).unwrap();
            // A typical value: a name, an address or a short note, as JSON text (~64 bytes).
            let value = format!("\"{:-<60}\"", format!("value {i}")).into_bytes();
            (field, cat, value)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let cats: Vec<Category> = CATEGORIES
        .iter()
        .map(|c| Category::parse(c).unwrap())
        .collect();
    let keyring = Keyring::generate(&cats, chrono::Utc::now()).unwrap();
    let rng = SystemRandom::new();
    let fields = record();

    let seal = |id: RecordId| {
        let mut keys = RecordKeys::new(id);
        let sealed: Vec<Vec<u8>> = fields
            .iter()
            .map(|(f, c, v)| keys.seal(&keyring, &rng, f, c, v).unwrap())
            .collect();
        (keys.take_new(), sealed)
    };

    let mut g = c.benchmark_group("student_record_20_fields_6_categories");
    g.throughput(Throughput::Elements(1));
    g.bench_function("seal", |b| b.iter(|| seal(RecordId::new_random())));

    let id = RecordId::new_random();
    let (deks, sealed) = seal(id);
    let open = || {
        let mut keys = RecordKeys::new(id);
        for w in &deks {
            keys.unwrap(&keyring, w).unwrap();
        }
        for ((f, c, _), ct) in fields.iter().zip(&sealed) {
            let plain = keys.open(f, c, ct).unwrap().unwrap();
            std::hint::black_box(plain);
        }
    };
    g.bench_function("open", |b| b.iter(open));
    g.bench_function("seal_and_open", |b| {
        b.iter(|| {
            let id = RecordId::new_random();
            let mut keys = RecordKeys::new(id);
            let sealed: Vec<Vec<u8>> = fields
                .iter()
                .map(|(f, c, v)| keys.seal(&keyring, &rng, f, c, v).unwrap())
                .collect();
            let deks = keys.take_new();
            let mut reader = RecordKeys::new(id);
            for w in &deks {
                reader.unwrap(&keyring, w).unwrap();
            }
            for ((f, c, _), ct) in fields.iter().zip(&sealed) {
                std::hint::black_box(reader.open(f, c, ct).unwrap().unwrap());
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
