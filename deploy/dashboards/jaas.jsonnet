// Grafana dashboard of a jaas-py operator, from the metrics its leader serves on
// --metrics-bind-address /metrics (jaas/observability/metrics.py). Plain Jsonnet;
// render it with jaas-py itself (deploy/dashboards/snippet.yaml) or any Jsonnet
// tool. Documented in docs/observability.md.
//
// Top-level arguments:
//   datasource  uid of the default Prometheus data source ("prometheus")
//   title       dashboard title ("jaas-py")
//   selector    extra label matchers added to every series selector, e.g.
//               'namespace="jaas-system"' or 'cluster="prod",job="jaas"' ("")
local g = import 'lib/grafana.libsonnet';

function(datasource='prometheus', title='jaas-py', selector='')
  // `name{matchers,selector}`, or the bare name when both are empty.
  local m(name, matchers='') =
    local all = std.join(',', std.filter(function(s) s != '', [matchers, selector]));
    if all == '' then name else name + '{' + all + '}';
  local rate(name, matchers='') = 'rate(' + m(name, matchers) + '[$__rate_interval])';
  local quantile(q, bucket, by='') =
    'histogram_quantile(%s, sum by (%s) (%s))' % [q, std.join(', ', std.filter(function(s) s != '', ['le', by])), rate(bucket)];
  local failed = 'status="False",reason!~"Suspended|Pending"';
  local t = g.target;

  {
    title: title,
    uid: 'jaas-py',
    description: 'jaas-py operator: reconciles, evaluation, caches, shards, downloads and API traffic.',
    tags: ['jaas', 'jsonnet', 'flux'],
    editable: true,
    schemaVersion: 39,
    version: 1,
    graphTooltip: 1,
    timezone: 'browser',
    refresh: '30s',
    time: { from: 'now-6h', to: 'now' },
    annotations: { list: [] },
    links: [],
    templating: { list: [g.datasourceVariable(datasource)] },
    panels: g.layout([
      g.row('Overview'),
      g.stat('Reconciles', [t('sum(%s)' % rate('jaas_snippet_reconcile_total'))], 'ops',
             'Ready condition writes per second, every outcome.'),
      g.stat('Failing reconciles', [t('sum(%s) / sum(%s)' % [rate('jaas_snippet_reconcile_total', failed), rate('jaas_snippet_reconcile_total')])],
             'percentunit', 'Share of Ready writes that are failures (Ready=False other than Suspended and Pending).',
             [{ color: 'green', value: null }, { color: 'orange', value: 0.01 }, { color: 'red', value: 0.1 }]),
      g.stat('Reconcile latency p99', [t(quantile('0.99', 'jaas_reconcile_duration_seconds_bucket'))], 's',
             'The slowest 1% of snippet reconciles take longer than this.',
             [{ color: 'green', value: null }, { color: 'orange', value: 10 }, { color: 'red', value: 30 }]),
      g.stat('Evaluator pool busy', [t('sum(%s) / sum(%s)' % [m('jaas_eval_in_flight'), m('jaas_eval_max_concurrent')])],
             'percentunit', 'Evaluations running now over evaluator processes.',
             [{ color: 'green', value: null }, { color: 'orange', value: 0.75 }, { color: 'red', value: 0.9 }]),

      g.row('Reconciles'),
      g.timeseries('Reconcile rate by outcome',
                   [t('sum by (status, reason) (%s)' % rate('jaas_snippet_reconcile_total'), '{{reason}} ({{status}})')],
                   'ops', 'Ready condition writes per second, by status and reason.'),
      g.timeseries('Reconcile errors by reason',
                   [t('sum by (reason) (%s)' % rate('jaas_snippet_reconcile_total', failed), '{{reason}}')],
                   'ops', 'Ready=False writes per second, by reason (Suspended and Pending are not errors); each reason has a runbook in docs/runbooks/.'),
      g.timeseries('Reconcile latency',
                   [t(quantile(q, 'jaas_reconcile_duration_seconds_bucket'), 'p' + std.substr(q, 2, 2)) for q in ['0.50', '0.95', '0.99']],
                   's', 'Percentiles of the duration of one snippet reconcile.'),
      g.timeseries('Reconcile stage latency p95',
                   [t(quantile('0.95', 'jaas_reconcile_stage_duration_seconds_bucket', 'stage'), '{{stage}}')],
                   's', '95th percentile of each reconcile stage (resolveSource, fetch, resolveLibraries, evaluate, package, publish, status).'),

      g.row('Evaluation'),
      g.timeseries('Evaluations in flight',
                   [t('sum(%s)' % m('jaas_eval_in_flight'), 'in flight'), t('sum(%s)' % m('jaas_eval_max_concurrent'), 'evaluator processes')],
                   'short', 'Evaluations running now against the evaluator processes in the pool.', w=8, min=0),
      g.timeseries('Evaluations by result',
                   [t('sum by (result) (%s)' % rate('jaas_evaluations_total'), '{{result}}'),
                    t('sum(%s)' % rate('jaas_eval_unavailable_total'), 'unavailable (requeued)')],
                   'ops', 'Evaluations per second by result (ok, failed, timeout, busy, trees_missing), and evaluations refused because every evaluator was busy.', w=8),
      g.timeseries('Evaluator kills by cause',
                   [t('sum by (cause) (%s)' % rate('jaas_evaluator_kills_total'), '{{cause}}')],
                   'ops', 'Evaluator processes killed per second, by cause (timeout, memory, crash); each is replaced.', w=8),
      g.timeseries('Evaluation timeouts',
                   [t('sum(%s)' % rate('jaas_evaluations_total', 'result="timeout"'), 'evaluations timed out'),
                    t('sum(%s)' % rate('jaas_snippet_reconcile_total', 'reason="EvaluationTimeout"'), 'Ready=EvaluationTimeout writes')],
                   'ops', 'Evaluations stopped at --evaluation-timeout, and the EvaluationTimeout conditions written.', w=12),
      g.timeseries('Evaluation latency',
                   [t(quantile(q, 'jaas_evaluation_duration_seconds_bucket'), 'p' + std.substr(q, 2, 2)) for q in ['0.50', '0.95', '0.99']],
                   's', 'Percentiles of one evaluation round trip in the pool.', w=12),

      g.row('Caches'),
      g.timeseries('Render cache hit ratio',
                   [t('sum(%s) / sum(%s)' % [rate('jaas_render_cache_total', 'result="hit"'), rate('jaas_render_cache_total')], 'hit ratio')],
                   'percentunit', 'Share of renders answered from the render cache (same inputs, no evaluation).', w=8, min=0, max=1),
      g.timeseries('Artifact cache hit ratio',
                   [t('sum(%s) / sum(%s)' % [rate('jaas_artifact_cache_lookups_total', 'result="hit"'), rate('jaas_artifact_cache_lookups_total')], 'hit ratio')],
                   'percentunit', 'Share of source artifact lookups answered by the content-addressed cache without a download.', w=8, min=0, max=1),
      g.timeseries('Artifact cache size',
                   [t('sum(%s)' % m('jaas_artifact_cache_bytes'), 'bytes held')],
                   'bytes', 'Bytes held by the content-addressed artifact cache (bounded by --cache-max-bytes).', w=8, min=0),

      g.row('Shards'),
      g.timeseries('Work queue depth', [t('sum by (shard) (%s)' % m('jaas_workqueue_depth'), '{{shard}}')],
                   'short', 'Snippets waiting for or in a reconcile, per shard.', w=8, min=0),
      g.timeseries('Oldest queued item age', [t('max by (shard) (%s)' % m('jaas_workqueue_oldest_item_age_seconds'), '{{shard}}')],
                   's', 'How long the oldest waiting snippet of each shard has waited.', w=8, min=0),
      g.timeseries('Reconcile rate by shard', [t('sum by (shard) (%s)' % rate('jaas_snippet_reconcile_total'), '{{shard}}')],
                   'ops', 'Ready condition writes per second, per shard.', w=8),
      g.timeseries('Owned namespaces', [t('sum by (shard) (%s)' % m('jaas_shard_owned_namespaces'), '{{shard}}')],
                   'short', 'Namespaces with JsonnetSnippets each shard owns.', w=8, min=0),
      g.timeseries('Owned snippets', [t('sum by (shard) (%s)' % m('jaas_shard_owned_snippets'), '{{shard}}')],
                   'short', 'JsonnetSnippets each shard owns.', w=8, min=0),
      g.timeseries('Shard restarts',
                   [t('sum by (shard) (increase(%s[$__rate_interval]))' % m('jaas_shard_restarts_total'), '{{shard}} restarted'),
                    t('sum by (shard) (increase(%s[$__rate_interval]))' % m('jaas_shard_wedged_total'), '{{shard}} wedged')],
                   'short', 'Shard worker processes restarted by the leader, and those killed first for making no progress.', w=8, min=0),

      g.row('Sources and API'),
      g.timeseries('Source downloads by result', [t('sum by (result) (%s)' % rate('jaas_source_downloads_total'), '{{result}}')],
                   'ops', 'Source artifact downloads per second (cache misses), by result.', w=8),
      g.timeseries('Source download throughput', [t('sum(%s)' % rate('jaas_source_download_bytes_total'), 'downloaded')],
                   'Bps', 'Bytes of source artifacts downloaded per second.', w=8),
      g.timeseries('Source resolutions by result', [t('sum by (result) (%s)' % rate('jaas_source_fetch_total'), '{{result}}')],
                   'ops', 'Flux source artifact resolutions per second, by result (ok, not_ready, failed).', w=8),
      g.timeseries('Kubernetes API requests by code', [t('sum by (code) (%s)' % rate('jaas_kube_api_requests_total'), '{{code}}')],
                   'reqps', 'Requests of the shards to the Kubernetes API per second, by HTTP status ("error": no response).', w=8),
      g.timeseries('Kubernetes API requests by verb', [t('sum by (verb) (%s)' % rate('jaas_kube_api_requests_total'), '{{verb}}')],
                   'reqps', 'Requests of the shards to the Kubernetes API per second, by verb.', w=8),
      g.timeseries('Artifact server requests by code', [t('sum by (code) (%s)' % rate('jaas_artifact_server_requests_total'), '{{code}}')],
                   'reqps', 'Requests to the artifact server (Flux consumers downloading rendered artifacts) per second, by HTTP status.', w=8),
    ]),
  }
