//! Job metrics for Prometheus: generation time and step latency per model,
//! finished jobs by outcome, and live workers. Rendered in the text
//! exposition format by hand; the set is small and fixed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

const GENERATION_BUCKETS: [f64; 11] = [
    0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
const STEP_BUCKETS: [f64; 11] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket, not cumulative; rendering accumulates.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.counts[i] += 1;
        }
        self.sum += value;
        self.count += 1;
    }

    /// Appends the `_bucket`, `_sum` and `_count` lines of `name{labels}`.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// Escapes a label value for the exposition format.
pub fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[derive(Default)]
struct Inner {
    generation_seconds: BTreeMap<String, Histogram>,
    step_seconds: BTreeMap<String, Histogram>,
    finished: BTreeMap<(String, &'static str), u64>,
}

#[derive(Default)]
pub struct JobMetrics {
    inner: Mutex<Inner>,
    pub(crate) workers_spawned: AtomicUsize,
    pub(crate) workers_alive: AtomicUsize,
}

impl JobMetrics {
    pub fn observe_generation(&self, model: &str, seconds: f64) {
        let mut inner = self.inner.lock().expect("metrics lock");
        inner
            .generation_seconds
            .entry(model.to_owned())
            .or_insert_with(|| Histogram::new(&GENERATION_BUCKETS))
            .observe(seconds);
    }

    pub fn observe_step(&self, model: &str, seconds: f64) {
        let mut inner = self.inner.lock().expect("metrics lock");
        inner
            .step_seconds
            .entry(model.to_owned())
            .or_insert_with(|| Histogram::new(&STEP_BUCKETS))
            .observe(seconds);
    }

    pub fn job_finished(&self, model: &str, outcome: &'static str) {
        let mut inner = self.inner.lock().expect("metrics lock");
        *inner
            .finished
            .entry((model.to_owned(), outcome))
            .or_default() += 1;
    }

    pub fn workers(&self) -> (usize, usize) {
        (
            self.workers_spawned.load(Ordering::SeqCst),
            self.workers_alive.load(Ordering::SeqCst),
        )
    }

    pub fn render(&self, out: &mut String) {
        let inner = self.inner.lock().expect("metrics lock");
        out.push_str("# HELP cyberimage_generation_seconds Wall time of finished generations, from claim to saved images.\n");
        out.push_str("# TYPE cyberimage_generation_seconds histogram\n");
        for (model, h) in &inner.generation_seconds {
            h.render(
                out,
                "cyberimage_generation_seconds",
                &format!("model=\"{}\"", label(model)),
            );
        }
        out.push_str("# HELP cyberimage_step_seconds Time between consecutive denoising steps.\n");
        out.push_str("# TYPE cyberimage_step_seconds histogram\n");
        for (model, h) in &inner.step_seconds {
            h.render(
                out,
                "cyberimage_step_seconds",
                &format!("model=\"{}\"", label(model)),
            );
        }
        out.push_str(
            "# HELP cyberimage_jobs_finished_total Jobs this process finished, by outcome.\n",
        );
        out.push_str("# TYPE cyberimage_jobs_finished_total counter\n");
        for ((model, outcome), n) in &inner.finished {
            let _ = writeln!(
                out,
                "cyberimage_jobs_finished_total{{model=\"{}\",outcome=\"{outcome}\"}} {n}",
                label(model)
            );
        }
        let (spawned, alive) = self.workers();
        out.push_str(
            "# HELP cyberimage_workers Workers in this process: spawned, and alive now.\n",
        );
        out.push_str("# TYPE cyberimage_workers gauge\n");
        let _ = writeln!(out, "cyberimage_workers{{state=\"spawned\"}} {spawned}");
        let _ = writeln!(out, "cyberimage_workers{{state=\"alive\"}} {alive}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.5, 1.7, 9.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "m=\"a\"");
        assert!(out.contains("x_bucket{m=\"a\",le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{m=\"a\",le=\"2\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{m=\"a\",le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_sum{m=\"a\"} 12.7\n"), "{out}");
        assert_eq!(label("a\"b\\c"), "a\\\"b\\\\c");
    }
}
