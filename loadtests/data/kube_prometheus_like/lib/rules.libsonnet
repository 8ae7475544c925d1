// Prometheus alerting and recording rules, in the style of the kubernetes mixins:
// one `|||` expression formatted with the component's config per rule, and a
// runbook URL per alert (kube-prometheus adds it with std.asciiLower(alert)).
local kinds = ['ErrorRate', 'Latency', 'Restarts', 'Memory'];
local severities = ['warning', 'critical', 'info'];
local series = ['requests', 'errors', 'latency'];
{
  alert(c, g, r):: {
    local name = c.camelName + kinds[r % 4] + 'High' + (g * 100 + r),
    alert: name,
    expr: |||
      (
        sum by (namespace, job, instance) (rate(%(metric)s_errors_total{job="%(job)s"}[5m]))
      /
        sum by (namespace, job, instance) (rate(%(metric)s_requests_total{job="%(job)s"}[5m]))
      ) > 0.0%(threshold)d
    ||| % { metric: c.metricPrefix, job: c.name, threshold: 1 + (g * 7 + r) % 9 },
    'for': ['5m', '15m', '1h'][r % 3],
    labels: { severity: severities[r % 3], group: 'g' + g },
    annotations: {
      summary: c.name + ' has a high ' + std.asciiLower(kinds[r % 4]) + '.',
      description: '{{ $value | humanizePercentage }} of the requests of ' + c.name + '/{{ $labels.instance }} failed over the last 5 minutes.',
      runbook_url: 'https://runbooks.prometheus-operator.dev/runbooks/%s/%s' % [c.component, std.asciiLower(name)],
    },
  },
  record(c, g, r):: {
    record: c.metricPrefix + ':' + series[r % 3] + ':rate' + (1 + r % 5) + 'm',
    expr: 'sum by (namespace, job) (rate(%s_%s_total{job="%s"}[%dm]))' % [c.metricPrefix, series[r % 3], c.name, 1 + r % 5],
  },
  groups(params, c):: [
    {
      name: c.name + '.rules.' + g,
      interval: '30s',
      rules: [if r % 3 == 0 then $.record(c, g, r) else $.alert(c, g, r) for r in std.range(0, params.rulesPerGroup - 1)],
    }
    for g in std.range(0, params.ruleGroups - 1)
  ],
}
