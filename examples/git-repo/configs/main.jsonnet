// Rendered by the app-config snippet (examples/git-snippet.yaml).
local app = import 'lib/app.libsonnet';
local envs = import 'lib/environments.json';

function(environment='staging')
  local env = envs[environment];
  {
    deployment: app.deployment('web', env.replicas, env.image),
    service: app.service('web', 8080),
  }
