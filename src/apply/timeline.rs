//! When each part of a run happened: phases and groups of steps as bars of a Gantt chart, the
//! critical path (the chain of steps, each waiting for the one before, whose durations add up
//! to the most) marked, and the bound it sets: no executor could run the plan faster than the
//! phases before it plus that chain.

use serde::Serialize;

use super::execute::StepRun;
use crate::plan::steps::{Plan, StepId};

/// A bar of the chart: a phase, or the steps of one group.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Bar {
    pub(crate) name: String,
    /// Seconds since the run started.
    pub(crate) start: f64,
    pub(crate) end: f64,
    /// Steps in the group (0 for a phase).
    pub(crate) steps: usize,
    /// Whether a step of the critical path is in it.
    pub(crate) critical: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Timeline {
    pub(crate) total_seconds: f64,
    pub(crate) bars: Vec<Bar>,
    /// The steps of the critical path, first to last.
    pub(crate) critical_path: Vec<StepId>,
    /// The phases before the plan ran plus the critical path's summed durations: the shortest
    /// time any executor could take for this plan with these call latencies.
    pub(crate) bound_seconds: f64,
}

/// The timeline of a run: `before` are the phases before the plan ran (login, observe),
/// `after` those after it (bootstrap), each as `(name, start, end)`.
pub(crate) fn build(
    plan: &Plan,
    runs: &[StepRun],
    before: &[(String, f64, f64)],
    after: &[(String, f64, f64)],
    total_seconds: f64,
) -> Timeline {
    let duration = |id: StepId| {
        runs.iter()
            .find(|r| r.step == id)
            .map_or(0.0, |r| r.end - r.start)
    };
    // Longest chain by duration: steps are in an order where every need comes first.
    let mut longest = vec![(0.0_f64, None::<StepId>); plan.steps.len()];
    for step in &plan.steps {
        let best = step
            .needs
            .iter()
            .map(|n| (longest[*n].0, Some(*n)))
            .fold((0.0, None), |a, b| if b.0 > a.0 { b } else { a });
        longest[step.id] = (best.0 + duration(step.id), best.1);
    }
    let mut critical_path = Vec::new();
    let mut at = longest
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.0.total_cmp(&b.1.0))
        .map(|(i, _)| i);
    while let Some(id) = at {
        critical_path.push(id);
        at = longest[id].1;
    }
    critical_path.reverse();
    let chain: f64 = critical_path.iter().map(|id| duration(*id)).sum();
    let plan_start = runs.iter().map(|r| r.start).fold(f64::INFINITY, f64::min);
    let before_end = before.iter().map(|b| b.2).fold(0.0, f64::max);
    let after_sum: f64 = after.iter().map(|a| a.2 - a.1).sum();

    let mut bars: Vec<Bar> = before
        .iter()
        .map(|(name, start, end)| phase(name, *start, *end))
        .collect();
    let mut groups: Vec<&'static str> = Vec::new();
    for run in runs {
        if !groups.contains(&run.group) {
            groups.push(run.group);
        }
    }
    groups.sort_by(|a, b| {
        let first = |g: &&str| {
            runs.iter()
                .filter(|r| r.group == *g)
                .map(|r| r.start)
                .fold(f64::INFINITY, f64::min)
        };
        first(a).total_cmp(&first(b))
    });
    for group in groups {
        let members: Vec<&StepRun> = runs.iter().filter(|r| r.group == group).collect();
        bars.push(Bar {
            name: group.to_string(),
            start: members
                .iter()
                .map(|r| r.start)
                .fold(f64::INFINITY, f64::min),
            end: members.iter().map(|r| r.end).fold(0.0, f64::max),
            steps: members.len(),
            critical: members.iter().any(|r| critical_path.contains(&r.step)),
        });
    }
    bars.extend(
        after
            .iter()
            .map(|(name, start, end)| phase(name, *start, *end)),
    );
    let before_plan = if plan_start.is_finite() {
        plan_start.max(before_end)
    } else {
        before_end
    };
    Timeline {
        total_seconds,
        bars,
        critical_path,
        bound_seconds: before_plan + chain + after_sum,
    }
}

fn phase(name: &str, start: f64, end: f64) -> Bar {
    Bar {
        name: name.to_string(),
        start,
        end,
        steps: 0,
        critical: true,
    }
}

/// The chart as text, `width` columns for the bars: one line per bar, `*` marking the critical
/// path, then the bound.
pub(crate) fn render(timeline: &Timeline, width: usize) -> String {
    let total = timeline.total_seconds.max(f64::EPSILON);
    let column = |t: f64| {
        ((t / total) * width as f64)
            .round()
            .clamp(0.0, width as f64) as usize
    };
    let mut text = String::from("timeline (* on the critical path):\n");
    for bar in &timeline.bars {
        let (from, to) = (
            column(bar.start),
            column(bar.end).max(column(bar.start) + 1),
        );
        let to = to.min(width).max(from);
        let drawn: String = (0..width)
            .map(|c| if c >= from && c < to { '#' } else { ' ' })
            .collect();
        let label = match bar.steps {
            0 => bar.name.clone(),
            n => format!("{} ({n})", bar.name),
        };
        text.push_str(&format!(
            "  {} {:<24} |{drawn}| {:>6.2} s\n",
            if bar.critical { '*' } else { ' ' },
            label,
            bar.end - bar.start
        ));
    }
    text.push_str(&format!(
        "  total {:.2} s; critical-path bound {:.2} s ({} step(s) on it)\n",
        timeline.total_seconds,
        timeline.bound_seconds,
        timeline.critical_path.len()
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::steps::Action;

    fn plan_of(needs: &[&[StepId]]) -> Plan {
        let mut plan = Plan::default();
        for (i, n) in needs.iter().enumerate() {
            plan.push(
                Action::CreateNetwork {
                    name: format!("n{i}"),
                },
                n,
            );
        }
        plan
    }

    fn run(step: StepId, group: &'static str, start: f64, end: f64) -> StepRun {
        StepRun {
            step,
            group,
            start,
            end,
        }
    }

    #[test]
    fn the_critical_path_is_the_longest_chain_of_durations() {
        // 0 -> 2 and 1 -> 2: step 1 takes longer, so the path is 1, 2.
        let plan = plan_of(&[&[], &[], &[0, 1]]);
        let runs = [
            run(0, "a", 1.0, 1.5),
            run(1, "b", 1.0, 3.0),
            run(2, "c", 3.0, 4.0),
        ];
        let before = [("observe".to_string(), 0.0, 1.0)];
        let timeline = build(&plan, &runs, &before, &[], 4.5);
        assert_eq!(timeline.critical_path, [1, 2]);
        assert!((timeline.bound_seconds - 4.0).abs() < 1e-9, "{timeline:?}");
        let critical: Vec<&str> = timeline
            .bars
            .iter()
            .filter(|b| b.critical)
            .map(|b| b.name.as_str())
            .collect();
        assert_eq!(critical, ["observe", "b", "c"]);
        let text = render(&timeline, 20);
        assert!(text.contains("* b (1)"), "{text}");
        assert!(text.contains("  a (1)"), "{text}");
        assert!(text.contains("critical-path bound 4.00 s"), "{text}");
    }
}
