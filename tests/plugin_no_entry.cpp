// A shared library that is not a Plumber plugin: it lacks the entry point.
extern "C" int plumber_test_not_a_plugin() {
  return 42;
}
