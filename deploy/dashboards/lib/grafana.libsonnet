// A few builders for Grafana dashboard JSON (schemaVersion 39, Grafana 10.4+
// and 11), plain Jsonnet: https://grafana.com/docs/grafana/latest/dashboards/build-dashboards/view-dashboard-json-model/
// Panels are built without a position; `layout` places them on Grafana's
// 24-column grid and numbers them.
{
  // Every panel and query reads the data source chosen in the `datasource` variable.
  datasourceRef:: { type: 'prometheus', uid: '${datasource}' },

  // The dashboard variable that selects a Prometheus data source; `uid` is the default.
  datasourceVariable(uid):: {
    name: 'datasource',
    label: 'Data source',
    type: 'datasource',
    query: 'prometheus',
    current: { selected: false, text: uid, value: uid },
    hide: 0,
    refresh: 1,
    regex: '',
    options: [],
  },

  // One PromQL query; `legend` is a legend format such as '{{shard}}'.
  target(expr, legend=''):: {
    datasource: $.datasourceRef,
    expr: expr,
    legendFormat: if legend == '' then '__auto' else legend,
    range: true,
    instant: false,
    editorMode: 'code',
  },

  local withRefIds(targets) = std.mapWithIndex(
    function(i, t) t { refId: std.char(std.codepoint('A') + i) }, targets
  ),

  // A time series panel of `targets` in `unit` (Grafana unit ids: s, ops, percentunit, bytes, ...).
  timeseries(title, targets, unit='short', description='', w=12, h=8, min=null, max=null):: {
    type: 'timeseries',
    title: title,
    description: description,
    datasource: $.datasourceRef,
    targets: withRefIds(targets),
    fieldConfig: {
      defaults: {
        unit: unit,
        custom: { drawStyle: 'line', lineWidth: 1, fillOpacity: 10, showPoints: 'never', spanNulls: false },
      } + (if min == null then {} else { min: min }) + (if max == null then {} else { max: max }),
      overrides: [],
    },
    options: {
      legend: { displayMode: 'list', placement: 'bottom', showLegend: true },
      tooltip: { mode: 'multi', sort: 'desc' },
    },
    gridPos: { w: w, h: h },
  },

  // A single-value panel showing the last value of `targets`, coloured by `thresholds`
  // ([{ color, value }], the first value null).
  stat(title, targets, unit='short', description='', thresholds=[{ color: 'green', value: null }], w=6, h=4):: {
    type: 'stat',
    title: title,
    description: description,
    datasource: $.datasourceRef,
    targets: withRefIds(targets),
    fieldConfig: {
      defaults: { unit: unit, thresholds: { mode: 'absolute', steps: thresholds } },
      overrides: [],
    },
    options: {
      reduceOptions: { calcs: ['lastNotNull'], fields: '', values: false },
      colorMode: 'value',
      graphMode: 'area',
      justifyMode: 'auto',
      textMode: 'auto',
      orientation: 'auto',
    },
    gridPos: { w: w, h: h },
  },

  // A row header across the whole width.
  row(title):: {
    type: 'row',
    title: title,
    collapsed: false,
    panels: [],
    gridPos: { w: 24, h: 1 },
  },

  // Places `panels` left to right and top to bottom on the 24-column grid (a panel that
  // does not fit on the current line starts the next one, so a row always does), and
  // gives them ids 1, 2, ...
  layout(panels)::
    local place(state, p) =
      local wrap = state.x + p.gridPos.w > 24;
      local x = if wrap then 0 else state.x;
      local y = if wrap then state.y + state.lineH else state.y;
      {
        x: x + p.gridPos.w,
        y: y,
        lineH: std.max(if wrap then 0 else state.lineH, p.gridPos.h),
        out: state.out + [p { gridPos+: { x: x, y: y } }],
      };
    local placed = std.foldl(place, panels, { x: 0, y: 0, lineH: 0, out: [] }).out;
    std.mapWithIndex(function(i, p) p { id: i + 1 }, placed),
}
