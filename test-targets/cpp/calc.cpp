// cpp_calc: a C++ method to patch by its demangled name.
//   call N -> "method N R"   R = ns::Calc::method(N) = N+5   (fix_cpp.so: N*500)
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <unistd.h>

namespace ns {
struct Calc {
    int base;
    int method(int x);
};

static volatile long method_calls;

__attribute__((noipa)) int Calc::method(int x) {
    method_calls = method_calls + 1;
    return x + base;
}
} // namespace ns

int main() {
    std::cout << "ready " << getpid() << std::endl;
    std::string line;
    ns::Calc calc{5};
    ns::Calc *volatile c = &calc;
    while (std::getline(std::cin, line) && line != "quit") {
        if (line.rfind("call ", 0) == 0) {
            volatile int n = std::stoi(line.substr(5));
            int r = c->method(n);
            std::cout << "method " << n << " " << r << std::endl;
        } else {
            std::cout << "error unknown command: " << line << std::endl;
        }
    }
    return 0;
}
