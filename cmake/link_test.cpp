// Linked with every object of one module and only its declared
// dependencies: an undeclared dependency is an unresolved symbol.
int main() {
  return 0;
}
