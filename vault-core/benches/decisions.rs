//! Decisions per read (casbin behind the per-role cache, as the server uses it) and audit
//! verification per entry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vault_core::{Action, Category, Policy, Purpose, Role, SchoolId, Scope};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let policy = rt
        .block_on(Policy::load_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"),
        ))
        .unwrap();
    let roles = vec![(
        Scope::School(SchoolId::parse("school-1").unwrap()),
        Role::Nurse,
    )];
    let school = SchoolId::parse("school-1").unwrap();
    let purpose = Purpose::parse("education").unwrap();
    let cats: Vec<Category> = [
        "identity",
        "contact",
        "academic",
        "attendance",
        "health",
        "psychological",
    ]
    .iter()
    .map(|c| Category::parse(c).unwrap())
    .collect();
    let mut g = c.benchmark_group("decision");
    g.throughput(Throughput::Elements(6));
    g.bench_function("six_categories_cached", |b| {
        b.iter(|| {
            for cat in &cats {
                std::hint::black_box(policy.decide(&roles, &school, cat, Action::Read, &purpose));
            }
        })
    });
    // A fresh policy each time: what the first read of a combination costs (casbin enforce).
    g.sample_size(10);
    g.bench_function("six_categories_uncached", |b| {
        b.iter_batched(
            || {
                rt.block_on(Policy::load_dir(
                    &Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"),
                ))
                .unwrap()
            },
            |p| {
                for cat in &cats {
                    std::hint::black_box(p.decide(&roles, &school, cat, Action::Read, &purpose));
                }
            },
            criterion::BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
