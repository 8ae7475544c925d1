// Grafana dashboards built as grafonnet v10 does: a constructor plus `+` of `with*` mixins.
local metrics = ['requests_total', 'errors_total', 'request_duration_seconds_bucket',
                 'resident_memory_bytes', 'cpu_seconds_total', 'goroutines'];
local units = ['reqps', 'reqps', 's', 'bytes', 'percentunit', 'short'];
local panel = {
  new(title, type):: { title: title, type: type, transparent: false },
  withId(id):: { id: id },
  withDescription(text):: { description: text },
  withDatasource(uid):: { datasource+: { type: 'prometheus', uid: uid } },
  withGridPos(h, w, x, y):: { gridPos+: { h: h, w: w, x: x, y: y } },
  withUnit(unit):: { fieldConfig+: { defaults+: { unit: unit } } },
  withMin(min):: { fieldConfig+: { defaults+: { min: min } } },
  withDecimals(decimals):: { fieldConfig+: { defaults+: { decimals: decimals } } },
  withColorMode(mode):: { fieldConfig+: { defaults+: { color+: { mode: mode } } } },
  withThresholds(steps):: { fieldConfig+: { defaults+: { thresholds+: { mode: 'absolute', steps: steps } } } },
  withCustom(custom):: { fieldConfig+: { defaults+: { custom+: custom } } },
  withOverride(name, properties):: { fieldConfig+: { overrides+: [{ matcher: { id: 'byName', options: name }, properties: properties }] } },
  withLegend(mode, placement, calcs):: { options+: { legend+: { displayMode: mode, placement: placement, calcs: calcs, showLegend: true } } },
  withTooltip(mode, sort):: { options+: { tooltip+: { mode: mode, sort: sort } } },
  withTargets(targets):: { targets+: targets },
  withLinks(links):: { links+: links },
};
{
  target(c, metric, by, j):: {
    datasource: { type: 'prometheus', uid: '${datasource}' },
    expr: if std.endsWith(metric, '_bucket') then
      'histogram_quantile(0.%d, sum by (le, %s) (rate(%s{cluster="$cluster", job="%s", instance=~"$instance"}[$__rate_interval])))' % [90 + j * 4, by, metric, c.name]
    else
      'sum by (' + by + ') (rate(' + metric + '{cluster="$cluster", job="' + c.name + '", instance=~"$instance"}[$__rate_interval]))',
    legendFormat: '{{' + by + '}}',
    refId: std.char(65 + j),
    interval: '',
    editorMode: 'code',
    range: true,
  },
  panel(c, i)::
    local metric = std.strReplace(c.name, '-', '_') + '_' + metrics[i % std.length(metrics)];
    std.foldl(function(p, mixin) p + mixin, [
      panel.withId(i + 1),
      panel.withDescription('Rate of ' + metric + ' for every instance of ' + c.name + '.'),
      panel.withDatasource('${datasource}'),
      panel.withGridPos(8, 12, (i % 2) * 12, std.floor(i / 2) * 8),
      panel.withUnit(units[i % std.length(units)]),
      panel.withMin(0),
      panel.withDecimals(i % 3),
      panel.withColorMode('palette-classic'),
      panel.withThresholds([{ color: 'green', value: null }, { color: 'orange', value: 60 + i }, { color: 'red', value: 80 + i }]),
      panel.withCustom({ lineWidth: 1, fillOpacity: 10, gradientMode: 'opacity', showPoints: 'never', spanNulls: false, axisPlacement: 'auto', drawStyle: 'line', lineInterpolation: 'smooth' }),
      panel.withCustom({ stacking: { mode: 'none', group: 'A' }, hideFrom: { legend: false, tooltip: false, viz: false }, scaleDistribution: { type: 'linear' } }),
      panel.withOverride('errors', [{ id: 'color', value: { fixedColor: 'red', mode: 'fixed' } }]),
      panel.withOverride('p99', [{ id: 'custom.lineStyle', value: { fill: 'dash', dash: [10, 10] } }]),
      panel.withLegend('table', 'bottom', ['mean', 'max', 'lastNotNull']),
      panel.withTooltip('multi', 'desc'),
      panel.withTargets([$.target(c, metric, c.groupBy[(i + j) % std.length(c.groupBy)], j) for j in std.range(0, 2)]),
      panel.withLinks([{ title: 'Runbook', url: 'https://runbooks.prometheus-operator.dev/runbooks/' + c.component, targetBlank: true }]),
    ], panel.new(c.name + ': ' + metric, if i % 4 == 0 then 'stat' else 'timeseries')),
  variable(name, query):: {
    name: name,
    label: name,
    type: 'query',
    datasource: { type: 'prometheus', uid: '${datasource}' },
    query: query,
    refresh: 2,
    includeAll: name == 'instance',
    multi: name == 'instance',
    sort: 1,
    hide: 0,
  },
  dashboard(params, c):: {
    uid: std.md5(c.name)[0:16],
    title: 'Kubernetes / %s' % c.name,
    tags: ['kube-prometheus', c.component],
    editable: false,
    timezone: 'UTC',
    refresh: '30s',
    schemaVersion: 39,
    time: { from: 'now-1h', to: 'now' },
    templating: {
      list: [
        { name: 'datasource', type: 'datasource', query: 'prometheus', current: { text: 'default', value: 'default' } },
        $.variable('cluster', 'label_values(up{job="%s"}, cluster)' % c.name),
        $.variable('instance', 'label_values(up{job="%s", cluster="$cluster"}, instance)' % c.name),
      ],
    },
    panels: std.makeArray(params.panels, function(i) $.panel(c, i)),
  },
}
