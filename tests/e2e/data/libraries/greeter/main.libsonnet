{ greet(name):: 'Hello, ' + name + (import 'lib/punctuation.json').mark }
