#include "cli/cli.hpp"

int main(int argc, char** argv) {
  return plumber::cli::main(argc, argv);
}
